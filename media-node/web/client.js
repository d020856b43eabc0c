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
  // How to come back if the node stops answering (the node's `resume` message): a renewed
  // token, the meeting's other nodes nearest first, the operator's rejoin URL, the region.
  resume: null,
  // Each recovery: why, when it started and ended (ms since page load), where it landed.
  recoveries: [],
  // ICE restarts asked for (a changed network: same node, no new join).
  iceRestarts: 0,
  recovering: false,
  left: false,
  // Milliseconds since page load at each step of joining (first time each happens), for
  // troubleshooting slow joins: token, ws_open, joined, offer, answer_sent, media_connected, track.
  marks: {},
  // The grid's page (0-based) and tile order (participant keys; speakers are swapped onto the
  // first page), when each participant last spoke, the size last asked for per track (0 =
  // paused at the node).
  page: 0,
  order: [],
  lastSpoke: new Map(),
  sizes: new Map(),
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

// Tiles on screen: one page of PAGE_SIZE (3×3 by default, `?page_size=N`). A tile off the
// page is hidden and one scrolled out of view is not visible: the node hears a 0×0 size for
// their video and stops sending it (it resumes at the next keyframe when shown again).
const PAGE_SIZE = Math.max(1, Math.min(49, Number(params.get('page_size')) || 9));
const visibility = new IntersectionObserver((entries) => {
  for (const e of entries) {
    e.target.dataset.visible = e.isIntersecting ? '1' : '0';
    reportSize(e.target);
  }
}, { root: null, threshold: 0 });

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
    if (!moim.order.includes(participantId)) moim.order.push(participantId);
    // Tell the node how large we render this participant, so it can pick a simulcast layer.
    new ResizeObserver(() => reportSize(el)).observe(el);
    visibility.observe(el);
    layout();
  }
  const p = moim.participants.get(participantId);
  el.querySelector('.name').textContent = participantId === moim.participantId ? 'you' : (p ? p.name : participantId);
  return el;
}

function reportSize(el) {
  const v = el.querySelector('video');
  const stream = v.srcObject;
  if (!stream || el.dataset.participant === moim.participantId) return;
  const shown = !el.hidden && el.dataset.visible !== '0';
  const w = shown ? Math.round(el.clientWidth * devicePixelRatio) : 0;
  const h = shown ? Math.round(el.clientHeight * devicePixelRatio) : 0;
  for (const t of stream.getVideoTracks()) {
    const info = [...moim.tracks.values()].find((i) => i.track_id === t.id);
    if (!info) continue;
    const last = moim.sizes.get(info.track_id);
    if (last && last[0] === w && last[1] === h) continue;
    moim.sizes.set(info.track_id, [w, h]);
    send({ type: 'layer_preference', track_id: info.track_id, max_width: w, max_height: h });
  }
}

// Orders the tiles (own first, then `moim.order`) and shows the current page only.
function layout() {
  const grid = $('grid');
  const byKey = new Map([...grid.querySelectorAll('.tile')].map((e) => [e.dataset.participant, e]));
  moim.order = moim.order.filter((k) => byKey.has(k) && k !== moim.participantId);
  for (const k of byKey.keys()) if (k !== moim.participantId && !moim.order.includes(k)) moim.order.push(k);
  const keys = (byKey.has(moim.participantId) ? [moim.participantId] : []).concat(moim.order);
  const pages = Math.max(1, Math.ceil(keys.length / PAGE_SIZE));
  moim.pages = pages;
  moim.page = Math.max(0, Math.min(moim.page, pages - 1));
  keys.forEach((k, i) => {
    const el = byKey.get(k);
    // CSS order, not DOM moves: moving a playing <video> restarts it.
    el.style.order = String(i);
    const hide = Math.floor(i / PAGE_SIZE) !== moim.page;
    if (el.hidden !== hide) { el.hidden = hide; reportSize(el); }
  });
  // As many columns as make the page square (3 for 9 tiles).
  const onPage = Math.min(PAGE_SIZE, Math.max(1, keys.length - moim.page * PAGE_SIZE));
  grid.style.setProperty('--cols', String(Math.ceil(Math.sqrt(onPage))));
  $('pager').hidden = pages < 2;
  $('pageinfo').textContent = `${moim.page + 1} / ${pages}`;
  $('prevpage').disabled = moim.page === 0;
  $('nextpage').disabled = moim.page >= pages - 1;
}

// Turns the grid to page `n` (0-based).
moim.setPage = (n) => { moim.page = n; layout(); return moim.page; };
moim.pageCount = () => moim.pages || 1;

// Last-N: receive video only from the `n` most recent speakers plus `pinned` participant ids
// (`n` null: everyone). Kept across rejoins; `?last_n=N` sets it at join.
moim.lastN = params.has('last_n') ? { n: Math.max(0, Number(params.get('last_n')) || 0), pinned: [] } : null;
moim.setLastN = (n, pinned = []) => {
  moim.lastN = n === null || n === undefined ? null : { n, pinned };
  send({ type: 'last_n', n: moim.lastN ? moim.lastN.n : null, pinned: moim.lastN ? moim.lastN.pinned : [] });
};

// Who speaks comes onto the first page: each current speaker not on it takes the place of the
// first-page tile that has gone longest without speaking (the rest of the grid keeps still).
function promoteSpeakers(ids) {
  const now = performance.now();
  for (const id of ids) moim.lastSpoke.set(id, now);
  const own = document.querySelector(`.tile[data-participant="${moim.participantId}"]`) ? 1 : 0;
  const slots = PAGE_SIZE - own;
  const order = moim.order;
  for (const id of ids) {
    const i = order.indexOf(id);
    if (i < slots) continue;
    let j = -1;
    for (let k = 0; k < Math.min(slots, order.length); k++) {
      if (ids.includes(order[k])) continue;
      if (j < 0 || (moim.lastSpoke.get(order[k]) || 0) < (moim.lastSpoke.get(order[j]) || 0)) j = k;
    }
    if (j < 0) continue;
    [order[i], order[j]] = [order[j], order[i]];
  }
  layout();
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
  watchPath(pc);
  return pc;
}

// A peer connection whose path went quiet: ICE `disconnected` for a moment, or `failed`. With
// signalling still up the network changed under us: restart ICE on the same node. With
// signalling gone too the node is gone: recover elsewhere.
function watchPath(pc) {
  let timer = null;
  pc.onconnectionstatechange = () => {
    const st = pc.connectionState;
    if (st === 'connected') { mark('media_connected'); clearTimeout(timer); timer = null; }
    if (!moim.recovering) setStatus(st === 'connected' ? `in ${moim.room} as ${moim.participantId}` : 'media: ' + st);
    if ((st === 'disconnected' || st === 'failed') && !timer) {
      timer = setTimeout(() => {
        timer = null;
        if (pc !== moim.pub && pc !== moim.sub) return;
        if (pc.connectionState === 'connected') return;
        if (moim.ws && moim.ws.readyState === WebSocket.OPEN) restartIce('ice ' + pc.connectionState);
        else recover('media path lost');
      }, st === 'failed' ? 0 : DISCONNECTED_GRACE_MS);
    }
  };
}

// How long `disconnected` may last before the client restarts ICE (a brief loss of a few
// packets recovers by itself).
const DISCONNECTED_GRACE_MS = 400;
// An ICE restart that has not reconnected both connections after this long gives up on the
// node (see restartIce).
const RESTART_GIVE_UP_MS = 5000;
// After an ICE restart, further triggers within this long are the same break (the restart's
// checks and keyframe take ~0.5 s on a short path).
const RESTART_SETTLE_MS = 2000;

// Media silence: RTP was arriving on the subscribe connection and has stopped for this long
// (video sends ~30 packets a second, audio 50): the path under us changed (a NAT rebinding,
// Wi-Fi to cellular), and browsers take seconds more to call the connection `disconnected`.
const MEDIA_SILENCE_MS = 600;
const WATCHDOG_EVERY_MS = 200;
// Incoming silence while the node still answers our publish connection is most likely the
// sources' (a remote publisher's node died, its region's link is being re-planned): the path
// works, and an ICE restart would only delay the media coming back. Only a long silence then
// restarts (a path that broke on the subscribe connection alone).
const SOURCE_SILENCE_MS = 3000;

// The same from the publishing side: media going out on the publish connection while nothing
// comes back from the node (it sends congestion feedback several times a second and a report
// every second while our media reaches it). A NAT that remapped only this connection's port
// shows up here first: the node keeps sending to the old mapping, and our own incoming media,
// on the other connection, may have healed by itself and would not tell.
setInterval(async () => {
  const pc = moim.pub;
  if (!pc || moim.recovering || document.hidden) return;
  let sent = 0;
  let back = 0;
  try {
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp') sent += s.packetsSent || 0;
      if (s.type === 'transport') back += s.bytesReceived || 0;
    });
  } catch (_) { return; }
  const w = (moim.pubWatchdog ||= { pc: null, sent: 0, back: 0, at: 0, fired: false });
  const now = performance.now();
  if (w.pc !== pc || back > w.back) {
    if (back > w.back) moim.pubFeedbackAt = now;
    w.pc = pc; w.back = back; w.sent = sent; w.at = now; w.fired = false;
    return;
  }
  // Not sending (muted, nothing published): nothing to judge.
  if (sent === w.sent) { w.at = now; return; }
  w.sent = sent;
  if (back > 0 && !w.fired && now - w.at > MEDIA_SILENCE_MS) {
    w.fired = true;
    if (moim.ws && moim.ws.readyState === WebSocket.OPEN) restartIce('no feedback on the publish connection');
    else recover('no feedback on the publish connection');
  }
}, WATCHDOG_EVERY_MS);

// Watches the subscribe connection for media silence; restarts ICE once per silence.
setInterval(async () => {
  const pc = moim.sub;
  if (!pc || moim.recovering || document.hidden) return;
  let packets = 0;
  let streams = 0;
  const counted = [];
  try {
    (await pc.getStats()).forEach((s) => {
      // Video paused at our request is silent by design.
      const paused = s.kind === 'video' && (moim.sizes.get(s.trackIdentifier) || [1])[0] === 0;
      if (s.type === 'inbound-rtp' && !paused) { packets += s.packetsReceived || 0; streams++; counted.push(s.id); }
    });
  } catch (_) { return; }
  const w = (moim.watchdog ||= { pc: null, packets: 0, at: 0, fired: false, streams: '' });
  const now = performance.now();
  // A stream paused or resumed changes what is summed: start counting afresh.
  const ids = counted.sort().join(',');
  if (w.pc !== pc || packets > w.packets || ids !== w.streams) {
    w.pc = pc; w.packets = packets; w.at = now; w.fired = false; w.streams = ids;
    return;
  }
  const pathWorks = moim.pub && now - (moim.pubFeedbackAt || -1e9) < MEDIA_SILENCE_MS;
  const silence = pathWorks ? SOURCE_SILENCE_MS : MEDIA_SILENCE_MS;
  if (streams > 0 && packets > 0 && !w.fired && now - w.at > silence) {
    w.fired = true;
    if (moim.ws && moim.ws.readyState === WebSocket.OPEN) restartIce('incoming media silent');
    else recover('media silent');
  }
}, WATCHDOG_EVERY_MS);

// Restarts ICE on both connections, on the node we are on: new ICE credentials, the same
// DTLS session, tracks and ids. The node answers the publish re-offer and sends a fresh
// subscribe offer.
async function restartIce(why) {
  // What set off each restart (and what was ignored as the same break), for troubleshooting.
  (moim.restartLog ||= []).push({ at: Date.now(), why, skipped: !!moim.restartingIce || performance.now() - (moim.restartedAt || -1e9) < RESTART_SETTLE_MS });
  if (moim.restartLog.length > 20) moim.restartLog.shift();
  // One restart per incident: both watchdogs (and ICE state changes) see the same break, and
  // a second restart right after the first would throw away its credentials mid-check.
  if (moim.restartingIce || performance.now() - (moim.restartedAt || -1e9) < RESTART_SETTLE_MS) return;
  moim.restartingIce = true;
  moim.restartedAt = performance.now();
  moim.iceRestarts++;
  setStatus('reconnecting… (network changed)');
  const ws = moim.ws;
  try {
    if (moim.pub) { moim.pub.restartIce(); await publishOffer(declared); }
    if (moim.sub) send({ type: 'ice_restart' });
  } finally {
    moim.restartingIce = false;
  }
  // A node whose machine is gone leaves the socket looking open (no reset comes back) for
  // minutes: a restart that has not brought the connections back in time counts as a dead
  // node, and the page rejoins elsewhere.
  setTimeout(() => {
    if (moim.ws !== ws || moim.left || moim.recovering) return;
    if ([moim.pub, moim.sub].every((pc) => !pc || pc.connectionState === 'connected')) return;
    recover('ICE restart did not complete');
  }, RESTART_GIVE_UP_MS);
}

async function onMessage(msg) {
  switch (msg.type) {
    case 'joined':
      mark('joined');
      // A new session (first join, or a rejoin elsewhere) knows no sizes yet.
      moim.sizes.clear();
      moim.participantId = msg.participant_id;
      moim.room = msg.room;
      for (const p of msg.participants) moim.participants.set(p.id, p);
      for (const t of msg.tracks) moim.tracks.set(t.track_id, t);
      for (const p of msg.participants) { tile(p.id); indicators(p.id); }
      setStatus(`in ${msg.room} as ${msg.participant_id}`);
      $('cam').disabled = !msg.can_publish; $('screen').disabled = !msg.can_publish;
      $('leave').disabled = false;
      $('chattext').disabled = $('chatsend').disabled = msg.can_chat === false;
      if (msg.can_chat === false) $('chattext').placeholder = 'chat is off for viewers';
      if (msg.can_publish && (moim.republish || (params.get('publish') !== '0' && params.has('autojoin')))) publishCamera();
      moim.republish = false;
      if (moim.lastN) moim.setLastN(moim.lastN.n, moim.lastN.pinned);
      break;
    case 'resume':
      moim.resume = msg;
      moim.token = msg.token;
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
    case 'participants_left':
      for (const id of msg.participant_ids || [msg.participant_id]) {
        moim.participants.delete(id);
        document.querySelectorAll(`.tile[data-participant^="${id}"]`).forEach((e) => { visibility.unobserve(e); e.remove(); });
      }
      layout();
      break;
    case 'track_published':
      moim.tracks.set(msg.track.track_id, msg.track);
      indicators(msg.track.participant_id);
      break;
    case 'track_muted': {
      const t = moim.tracks.get(msg.track_id);
      if (t) t.muted = msg.muted;
      indicators(msg.participant_id);
      break;
    }
    case 'track_unpublished':
    case 'tracks_unpublished':
      for (const id of msg.track_ids || [msg.track_id]) moim.tracks.delete(id);
      break;
    case 'active_speakers':
      moim.speakers = msg.participant_ids;
      document.querySelectorAll('.tile').forEach((e) => e.classList.toggle('speaking', msg.participant_ids.includes(e.dataset.participant)));
      promoteSpeakers(msg.participant_ids.filter((id) => id !== moim.participantId));
      break;
    case 'publish_layers':
      // Dynacast: nobody wants more of this track than `max_layer` (null: nobody watches it),
      // so the encodings above it stop, saving this machine's encoder and uplink.
      setPublishedLayers(msg.track_id, msg.max_layer);
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
      // Joined again elsewhere (another tab or device): this page leaves for good, or the two
      // would take the seat from each other for ever.
      if (msg.code === 'replaced') moim.left = true;
      setStatus(`error: ${msg.message}`);
      break;
  }
}

// Simulcast encodings by layer, as the node numbers them (q, h, f: quarter, half, full).
const RID_LAYER = { q: 0, h: 1, f: 2 };

async function setPublishedLayers(trackId, maxLayer) {
  (moim.publishedLayers ||= {})[trackId] = maxLayer;
  const sender = moim.pub && moim.pub.getSenders().find((s) => s.track && s.track.id === trackId);
  if (!sender) return;
  const p = sender.getParameters();
  if (!p.encodings || !p.encodings.length) return;
  p.encodings.forEach((e, i) => { e.active = maxLayer !== null && (RID_LAYER[e.rid] ?? i) <= maxLayer; });
  try { await sender.setParameters(p); } catch (e) { moim.errors.push({ code: 'publish_layers', message: String(e) }); }
}

async function publishOffer(tracks) {
  const offer = await moim.pub.createOffer();
  await moim.pub.setLocalDescription(offer);
  send({ type: 'publish_offer', sdp: moim.pub.localDescription.sdp, tracks });
}

const declared = [];

async function publishCamera() {
  // After a reconnect the camera is still open: publish the same tracks again.
  const live = moim.localStream && moim.localStream.getTracks().some((t) => t.readyState === 'live');
  const stream = live ? moim.localStream : await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 1280, height: 720 } });
  moim.localStream = stream;
  if (!moim.pub) { moim.pub = new RTCPeerConnection(pcConfig()); watchPath(moim.pub); }
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
  $('mic').disabled = !audio; $('video').disabled = !video;
  await publishOffer(declared);
  // Muted before a reconnect: the node we are on now hears it too.
  for (const t of stream.getTracks()) if (!t.enabled) send({ type: 'mute', track_id: t.id, muted: true });
  indicators(moim.participantId);
}

// Mutes or unmutes our microphone (`audio`) or camera (`video`): the track sends silence or
// black with no renegotiation, and everyone sees the indicator (`track_muted`).
function toggleMute(kind) {
  const s = moim.localStream;
  const t = s && (kind === 'audio' ? s.getAudioTracks() : s.getVideoTracks())[0];
  if (!t) return;
  t.enabled = !t.enabled;
  send({ type: 'mute', track_id: t.id, muted: !t.enabled });
  const b = $(kind === 'audio' ? 'mic' : 'video');
  b.setAttribute('aria-pressed', String(!t.enabled));
  b.textContent = kind === 'audio' ? (t.enabled ? 'Mute' : 'Unmute') : (t.enabled ? 'Stop video' : 'Start video');
  indicators(moim.participantId);
}
moim.toggleMute = toggleMute;

// The mic-off and camera-off marks on a participant's tile.
function indicators(participantId) {
  const el = document.querySelector(`.tile[data-participant="${participantId}"]`);
  if (!el) return;
  let mic = false; let cam = false;
  if (participantId === moim.participantId) {
    const s = moim.localStream;
    mic = !!s && s.getAudioTracks().some((t) => !t.enabled);
    cam = !!s && s.getVideoTracks().some((t) => !t.enabled);
  } else {
    for (const t of moim.tracks.values()) {
      if (t.participant_id !== participantId || !t.muted) continue;
      if (t.kind === 'audio' && t.source === 'microphone') mic = true;
      if (t.kind === 'video' && t.source === 'camera') cam = true;
    }
  }
  el.classList.toggle('mic-off', mic);
  el.classList.toggle('cam-off', cam);
  el.dataset.initial = (el.querySelector('.name').textContent || '?').trim().slice(0, 1).toUpperCase();
}

async function shareScreen() {
  const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
  if (!moim.pub) { moim.pub = new RTCPeerConnection(pcConfig()); watchPath(moim.pub); }
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
  $('join').disabled = true;
  await connect(wsUrlOf(location.origin), moim.token);
}

function wsUrlOf(base) {
  const u = new URL('/ws', base);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

// Closes everything of the current session except the camera (a reconnect publishes it again).
function teardown() {
  const old = moim.ws;
  moim.ws = null;
  if (old) {
    old.onclose = null; old.onmessage = null;
    if (old.readyState === WebSocket.OPEN) old.send(JSON.stringify({ type: 'leave' }));
    old.close();
  }
  [moim.pub, moim.sub].forEach((pc) => pc && pc.close());
  moim.pub = null; moim.sub = null; moim.chat = null;
  declared.length = 0;
  moim.participants.clear(); moim.tracks.clear();
  $('grid').innerHTML = '';
}

// The meeting's share on this node moved to another node (it drains for scale-in): leave here
// and join there with the same token (every node of a deployment checks the same tokens),
// publishing again what was published.
async function moveTo(url) {
  moim.moves = (moim.moves || 0) + 1;
  moim.node = url;
  moim.republish = !!moim.localStream;
  teardown();
  await connect(wsUrlOf(url), moim.token);
}

// How long one attempt to join a node may take before the next is tried.
const JOIN_ATTEMPT_MS = 3000;
// Backoff between rounds of attempts.
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 4000;

// The node we were on stopped answering (signalling closed, or the media path died with it).
// Join again, without the person doing anything: the same node first (it may have been the
// network), then the node the operator names now, then the meeting's other nodes nearest first;
// rounds repeat with backoff until the token runs out. Only URLs from our own node (its
// `resume` message) or from the operator it named are followed.
async function recover(reason) {
  if (moim.recovering || moim.left) return;
  moim.recovering = true;
  const record = { reason, started: Math.round(performance.now()), ended: null, node: null, attempts: 0 };
  moim.recoveries.push(record);
  setStatus('reconnecting…');
  const lost = moim.node || location.origin;
  moim.republish = !!moim.localStream;
  teardown();
  let delay = BACKOFF_FIRST_MS;
  const unreachable = [];
  try {
    while (!moim.left) {
      const r = moim.resume;
      if (r && r.expires_at * 1000 < Date.now()) throw new Error('the meeting token expired while reconnecting');
      const tried = new Set();
      const attempt = async (url, token) => {
        if (!url || tried.has(url)) return false;
        tried.add(url);
        record.attempts++;
        try {
          await connect(wsUrlOf(url), token, JOIN_ATTEMPT_MS);
          moim.node = url;
          moim.token = token;
          record.node = url;
          return true;
        } catch (e) {
          if (!unreachable.includes(url)) unreachable.push(url);
          if (unreachable.length > 8) unreachable.shift();
          return false;
        }
      };
      if (await attempt(lost, moim.token)) break;
      if (r && r.rejoin_url) {
        const answer = await askRejoin(r.rejoin_url, { region: r.region, unreachable });
        if (answer && (await attempt(answer.url, answer.token))) break;
      }
      let done = false;
      for (const url of (r && r.fallback_urls) || []) {
        if (await attempt(url, moim.token)) { done = true; break; }
      }
      if (done) break;
      setStatus(`reconnecting… (retrying in ${(delay / 1000).toFixed(1)} s)`);
      await new Promise((res) => setTimeout(res, delay));
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
    record.ended = Math.round(performance.now());
  } catch (e) {
    moim.errors.push({ code: 'reconnect', message: String(e) });
    setStatus('disconnected: ' + String(e.message || e));
  } finally {
    moim.recovering = false;
  }
}

// Asks the operator's rejoin API where to go; null when it cannot say.
async function askRejoin(url, body) {
  try {
    const r = await fetch(url, {
      method: 'POST',
      headers: { authorization: 'Bearer ' + moim.token, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (!r.ok) return null;
    const a = await r.json();
    if (typeof a.url !== 'string' || !/^https?:\/\//.test(a.url) || typeof a.token !== 'string') return null;
    return a;
  } catch (_) {
    return null;
  }
}

// Opens signalling at `wsUrl` and joins with `token`; resolves once joined. Rejects when the
// socket closes first, the node refuses, or `timeoutMs` passes.
function connect(wsUrl, token, timeoutMs) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl);
    moim.ws = ws;
    let joined = false;
    const fail = (why) => {
      clearTimeout(timer);
      ws.onclose = null; ws.onmessage = null;
      if (ws.readyState <= WebSocket.OPEN) ws.close();
      if (moim.ws === ws) moim.ws = null;
      reject(new Error(why));
    };
    const timer = timeoutMs ? setTimeout(() => fail('timed out joining ' + wsUrl), timeoutMs) : null;
    ws.onopen = () => { mark('ws_open'); ws.send(JSON.stringify({ type: 'join', token })); };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (_) { return; }
      if (!joined && msg.type === 'error') { moim.errors.push(msg); fail(`${msg.code}: ${msg.message}`); return; }
      if (!joined && msg.type === 'joined') { joined = true; clearTimeout(timer); resolve(); }
      onMessage(msg).catch((e) => { moim.errors.push({ code: 'client', message: String(e) }); setStatus(String(e)); });
    };
    ws.onclose = (ev) => {
      if (!joined) { fail(`closed (${ev.code})`); return; }
      if (moim.ws !== ws || moim.left) return;
      setStatus(`disconnected (${ev.code} ${ev.reason || ''})`);
      recover('signalling closed');
    };
  });
}

function leave() {
  moim.left = true;
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
$('mic').onclick = () => toggleMute('audio');
$('video').onclick = () => toggleMute('video');
$('screen').onclick = () => shareScreen().catch((e) => setStatus(String(e)));
$('leave').onclick = leave;
$('prevpage').onclick = () => moim.setPage(moim.page - 1);
$('nextpage').onclick = () => moim.setPage(moim.page + 1);
$('chatform').onsubmit = (e) => { e.preventDefault(); sendChat($('chattext').value); $('chattext').value = ''; };

if (params.get('room')) $('room').value = params.get('room');
$('name').value = params.get('name') || '';
if (params.has('autojoin')) join($('room').value, $('name').value || 'guest').catch((e) => setStatus(String(e)));
// Two clients of one person must not fight over the session: leaving the page leaves.
window.addEventListener('pagehide', () => { moim.left = true; });
