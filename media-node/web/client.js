// moim web client: joins a room over WebSocket signalling, publishes camera, microphone and
// screen on a publish connection, receives everyone else on a subscribe connection that the
// node offers, and chats over the `chat` data channel. No build step; state is exposed as
// `window.moim` so that tests (and curious people) can look inside.
'use strict';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const mark = (name) => { if (!(name in moim.marks)) moim.marks[name] = Math.round(performance.now()); };

const moim = (window.moim = {
  participantId: null,
  participants: new Map(), // id -> {name}
  tracks: new Map(), // track id -> info
  chatLog: [],
  speakers: [],
  errors: [],
  ws: null,
  pub: null,
  sub: null,
  chat: null,
  localStream: null,
  // Where the client is connected after a move (null: the node that served this page), and
  // how many times its meeting moved it.
  node: null,
  moves: 0,
  // Milliseconds since page load at each step of joining (first time each happens), for
  // troubleshooting slow joins: token, ws_open, joined, offer, answer_sent, media_connected, track.
  marks: {},
  // Frames decoded per remote video track, from getStats().
  async videoStats() {
    const out = {};
    if (!moim.sub) return out;
    const report = await moim.sub.getStats();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out[s.trackIdentifier || s.id] = { framesDecoded: s.framesDecoded || 0, frameHeight: s.frameHeight || 0, freezeCount: s.freezeCount || 0 };
      }
    });
    return out;
  },
});

function setStatus(text) { $('status').textContent = text; }

function send(msg) {
  if (moim.ws && moim.ws.readyState === WebSocket.OPEN) moim.ws.send(JSON.stringify(msg));
}

function tile(participantId) {
  let el = document.querySelector(`.tile[data-participant="${participantId}"]`);
  if (!el) {
    el = document.createElement('div');
    el.className = 'tile';
    el.dataset.participant = participantId;
    const v = document.createElement('video');
    v.autoplay = true; v.playsInline = true;
    if (participantId === moim.participantId) v.muted = true;
    const n = document.createElement('span');
    n.className = 'name';
    el.append(v, n);
    $('grid').append(el);
    // Tell the node how large we render this participant, so it can pick a simulcast layer.
    new ResizeObserver(() => reportSize(el)).observe(el);
  }
  const p = moim.participants.get(participantId);
  el.querySelector('.name').textContent = participantId === moim.participantId ? 'you' : (p ? p.name : participantId);
  return el;
}

function reportSize(el) {
  const v = el.querySelector('video');
  const stream = v.srcObject;
  if (!stream || el.dataset.participant === moim.participantId) return;
  for (const t of stream.getVideoTracks()) {
    const info = [...moim.tracks.values()].find((i) => i.track_id === t.id);
    if (info) send({ type: 'layer_preference', track_id: info.track_id, max_width: Math.round(el.clientWidth * devicePixelRatio), max_height: Math.round(el.clientHeight * devicePixelRatio) });
  }
}

function addChat(from, name, text) {
  moim.chatLog.push({ from, name, text });
  const p = document.createElement('p');
  const b = document.createElement('b');
  b.textContent = name + ': ';
  p.append(b, document.createTextNode(text));
  $('chatlog').append(p);
  $('chatlog').scrollTop = $('chatlog').scrollHeight;
}

function newSubscribeConnection() {
  const pc = new RTCPeerConnection(pcConfig());
  pc.ontrack = (ev) => {
    mark('track');
    const stream = ev.streams[0];
    if (!stream) return;
    const el = tile(stream.id);
    const v = el.querySelector('video');
    if (ev.track.kind === 'video' && moim.tracks.get(ev.track.id)?.source === 'screen') {
      // A screen share gets its own tile.
      const st = tile(stream.id + ':screen');
      st.querySelector('.name').textContent = (moim.participants.get(stream.id)?.name || stream.id) + ' (screen)';
      st.querySelector('video').srcObject = new MediaStream([ev.track]);
      return;
    }
    if (!v.srcObject) v.srcObject = new MediaStream();
    v.srcObject.addTrack(ev.track);
    ev.track.onended = () => v.srcObject && v.srcObject.removeTrack(ev.track);
    reportSize(el);
  };
  pc.ondatachannel = (ev) => {
    if (ev.channel.label !== 'chat') return;
    moim.chat = ev.channel;
    ev.channel.onmessage = (m) => {
      try { const f = JSON.parse(m.data); addChat(f.from, f.name, f.text); } catch (_) { /* ignore garbage */ }
    };
  };
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === 'connected') mark('media_connected');
    setStatus('media: ' + pc.connectionState);
  };
  return pc;
}

async function onMessage(msg) {
  switch (msg.type) {
    case 'joined':
      mark('joined');
      moim.participantId = msg.participant_id;
      for (const p of msg.participants) moim.participants.set(p.id, p);
      for (const t of msg.tracks) moim.tracks.set(t.track_id, t);
      for (const p of msg.participants) tile(p.id);
      setStatus(`in ${msg.room} as ${msg.participant_id}`);
      $('cam').disabled = !msg.can_publish; $('screen').disabled = !msg.can_publish;
      $('leave').disabled = false; $('chattext').disabled = false; $('chatsend').disabled = false;
      if (msg.can_publish && (moim.republish || (params.get('publish') !== '0' && params.has('autojoin')))) publishCamera();
      moim.republish = false;
      break;
    case 'subscribe_offer': {
      mark('offer');
      if (!moim.sub) moim.sub = newSubscribeConnection();
      await moim.sub.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      const answer = await moim.sub.createAnswer();
      await moim.sub.setLocalDescription(answer);
      send({ type: 'subscribe_answer', sdp: moim.sub.localDescription.sdp });
      mark('answer_sent');
      break;
    }
    case 'publish_answer':
      await moim.pub.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
      break;
    case 'participant_joined':
      moim.participants.set(msg.participant.id, msg.participant);
      tile(msg.participant.id);
      break;
    case 'participant_left':
      moim.participants.delete(msg.participant_id);
      document.querySelectorAll(`.tile[data-participant^="${msg.participant_id}"]`).forEach((e) => e.remove());
      break;
    case 'track_published':
      moim.tracks.set(msg.track.track_id, msg.track);
      break;
    case 'track_unpublished':
      moim.tracks.delete(msg.track_id);
      break;
    case 'active_speakers':
      moim.speakers = msg.participant_ids;
      document.querySelectorAll('.tile').forEach((e) => e.classList.toggle('speaking', msg.participant_ids.includes(e.dataset.participant)));
      break;
    case 'chat':
      addChat(msg.from, msg.name, msg.text);
      break;
    case 'draining':
      setStatus('this server is draining' + (msg.url ? '; moving…' : ''));
      if (msg.url) moveTo(msg.url).catch((e) => { moim.errors.push({ code: 'move', message: String(e) }); setStatus(String(e)); });
      break;
    case 'error':
      moim.errors.push(msg);
      setStatus(`error: ${msg.message}`);
      break;
  }
}

async function publishOffer(tracks) {
  const offer = await moim.pub.createOffer();
  await moim.pub.setLocalDescription(offer);
  send({ type: 'publish_offer', sdp: moim.pub.localDescription.sdp, tracks });
}

const declared = [];

async function publishCamera() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 1280, height: 720 } });
  moim.localStream = stream;
  if (!moim.pub) moim.pub = new RTCPeerConnection(pcConfig());
  const [audio] = stream.getAudioTracks();
  const [video] = stream.getVideoTracks();
  if (audio) { moim.pub.addTransceiver(audio, { direction: 'sendonly', streams: [stream] }); declared.push({ track_id: audio.id, source: 'microphone' }); }
  if (video) {
    moim.pub.addTransceiver(video, {
      direction: 'sendonly', streams: [stream],
      sendEncodings: params.get('simulcast') === '0' ? [{}] : [
        { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
        { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
        { rid: 'f', maxBitrate: 1500000 },
      ],
    });
    declared.push({ track_id: video.id, source: 'camera' });
  }
  const me = tile(moim.participantId);
  me.querySelector('video').srcObject = stream;
  $('cam').disabled = true;
  await publishOffer(declared);
}

async function shareScreen() {
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  if (!moim.pub) moim.pub = new RTCPeerConnection(pcConfig());
  const [video] = stream.getVideoTracks();
  moim.pub.addTransceiver(video, { direction: 'sendonly', streams: [stream] });
  declared.push({ track_id: video.id, source: 'screen' });
  $('screen').disabled = true;
  await publishOffer(declared);
}

// TURN servers from the join API (`ice`: the JSON of its `iceServers`), and `relay=1` to send
// all media through them (to check that TURN works from where you are).
function pcConfig() {
  const cfg = { bundlePolicy: 'max-bundle' };
  if (params.get('ice')) {
    try { cfg.iceServers = JSON.parse(params.get('ice')); } catch (e) { setStatus('ignoring a malformed ice parameter'); }
  }
  if (params.get('relay') === '1') cfg.iceTransportPolicy = 'relay';
  return cfg;
}

async function devToken(room, identity, name) {
  const r = await fetch(`/dev/token?room=${encodeURIComponent(room)}&identity=${encodeURIComponent(identity)}&name=${encodeURIComponent(name)}`);
  if (!r.ok) throw new Error('this node does not hand out development tokens; pass ?token=');
  return (await r.text()).trim();
}

async function join(room, name) {
  const identity = name.toLowerCase().replace(/[^a-z0-9]+/g, '-') + '-' + Math.random().toString(36).slice(2, 7);
  moim.token = params.get('token') || (await devToken(room, identity, name));
  mark('token');
  connect(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
  $('join').disabled = true;
}

// The meeting's share on this node moved to another node (it drains for scale-in): leave here
// and join there with the same token (every node of a deployment checks the same tokens),
// publishing again what was published.
async function moveTo(url) {
  const target = new URL('/ws', url);
  target.protocol = target.protocol === 'https:' ? 'wss:' : 'ws:';
  moim.moves = (moim.moves || 0) + 1;
  moim.node = url;
  moim.republish = !!moim.localStream;
  const old = moim.ws;
  moim.ws = null;
  if (old) { old.onclose = null; if (old.readyState === WebSocket.OPEN) old.send(JSON.stringify({ type: 'leave' })); old.close(); }
  [moim.pub, moim.sub].forEach((pc) => pc && pc.close());
  moim.pub = null; moim.sub = null; moim.chat = null;
  moim.localStream && moim.localStream.getTracks().forEach((t) => t.stop());
  moim.localStream = null;
  declared.length = 0;
  moim.participants.clear(); moim.tracks.clear();
  $('grid').innerHTML = '';
  connect(target.href);
}

function connect(wsUrl) {
  const token = moim.token;
  const ws = new WebSocket(wsUrl);
  moim.ws = ws;
  ws.onopen = () => { mark('ws_open'); ws.send(JSON.stringify({ type: 'join', token })); };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data)).catch((e) => { moim.errors.push({ code: 'client', message: String(e) }); setStatus(String(e)); });
  ws.onclose = (ev) => setStatus(`disconnected (${ev.code} ${ev.reason || ''})`);
}

function leave() {
  send({ type: 'leave' });
  moim.ws && moim.ws.close();
  [moim.pub, moim.sub].forEach((pc) => pc && pc.close());
  moim.localStream && moim.localStream.getTracks().forEach((t) => t.stop());
  $('grid').innerHTML = '';
  setStatus('left');
}

function sendChat(text) {
  if (!text) return;
  if (moim.chat && moim.chat.readyState === 'open') moim.chat.send(JSON.stringify({ text }));
  else send({ type: 'chat', text });
}
moim.sendChat = sendChat;

$('joinform').onsubmit = (e) => { e.preventDefault(); join($('room').value, $('name').value).catch((err) => setStatus(String(err))); };
$('cam').onclick = () => publishCamera().catch((e) => setStatus(String(e)));
$('screen').onclick = () => shareScreen().catch((e) => setStatus(String(e)));
$('leave').onclick = leave;
$('chatform').onsubmit = (e) => { e.preventDefault(); sendChat($('chattext').value); $('chattext').value = ''; };

if (params.get('room')) $('room').value = params.get('room');
$('name').value = params.get('name') || '';
if (params.has('autojoin')) join($('room').value, $('name').value || 'guest').catch((e) => setStatus(String(e)));
