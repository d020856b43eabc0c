// The meeting page, built on the client library (/sdk/moim.js): a grid that pages through
// large rooms with the active speakers first, a speaker view, a presentation layout for
// screen shares, a webinar viewer layout, participant list, chat, raised hands, device choice
// and a connection-quality indicator; English and Korean; keyboard operable. The Room is
// `window.moim`, so that tests (and curious people) can look inside.
import { Room, listDevices } from '/sdk/moim.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// ------------------------------------------------------------------ text

const STRINGS = {
  en: {
    room: 'room', yourName: 'your name', join: 'Join', camera: 'Camera + mic', mute: 'Mute', unmute: 'Unmute',
    stopVideo: 'Stop video', startVideo: 'Start video', share: 'Share screen', stopShare: 'Stop sharing',
    raiseHand: 'Raise hand', lowerHand: 'Lower hand', speakerView: 'Speaker view', gridView: 'Grid view',
    leave: 'Leave', chat: 'Chat', people: 'People ({n})', message: 'message', send: 'Send', viewer: 'Viewer',
    you: 'you', screenOf: '{name} (screen)', notConnected: 'not connected', connecting: 'joining…',
    inRoom: 'in {room} as {id}', reconnecting: 'reconnecting…', networkChanged: 'reconnecting… (network changed)',
    retrying: 'reconnecting… ({why})', left: 'left', disconnected: 'disconnected: {why}', media: 'media: {state}',
    draining: 'this server is draining', moving: 'this server is draining; moving…', error: 'error: {message}',
    chatOff: 'chat is off for viewers', page: '{page} / {pages}', prevPage: 'previous page', nextPage: 'next page',
    quality: { excellent: 'excellent', good: 'good', poor: 'poor', lost: 'no connection' },
    qualityTitle: 'connection: {q} (round trip {rtt} ms, loss {loss}%)', noTokenServer: 'this node does not hand out development tokens; pass ?token=',
    handRaised: '{name} raised a hand', cameraSelect: 'camera', micSelect: 'microphone',
  },
  ko: {
    room: '방', yourName: '이름', join: '참여', camera: '카메라 + 마이크', mute: '음소거', unmute: '음소거 해제',
    stopVideo: '비디오 끄기', startVideo: '비디오 켜기', share: '화면 공유', stopShare: '공유 중지',
    raiseHand: '손들기', lowerHand: '손 내리기', speakerView: '발표자 보기', gridView: '격자 보기',
    leave: '나가기', chat: '채팅', people: '참가자 ({n})', message: '메시지', send: '보내기', viewer: '시청자',
    you: '나', screenOf: '{name} (화면)', notConnected: '연결 안 됨', connecting: '참여 중…',
    inRoom: '{room}에 {id}(으)로 참여 중', reconnecting: '다시 연결 중…', networkChanged: '다시 연결 중… (네트워크 변경)',
    retrying: '다시 연결 중… ({why})', left: '나감', disconnected: '연결 끊김: {why}', media: '미디어: {state}',
    draining: '이 서버는 정리 중입니다', moving: '이 서버는 정리 중입니다. 옮기는 중…', error: '오류: {message}',
    chatOff: '시청자는 채팅할 수 없습니다', page: '{page} / {pages}', prevPage: '이전 페이지', nextPage: '다음 페이지',
    quality: { excellent: '매우 좋음', good: '좋음', poor: '나쁨', lost: '연결 없음' },
    qualityTitle: '연결: {q} (왕복 {rtt} ms, 손실 {loss}%)', noTokenServer: '이 노드는 개발용 토큰을 주지 않습니다. ?token= 을 붙이세요',
    handRaised: '{name} 님이 손을 들었습니다', cameraSelect: '카메라', micSelect: '마이크',
  },
};
// `?lang=ko|en`, else the browser's first language we have.
const LANG = [params.get('lang'), ...(navigator.languages || [navigator.language])]
  .map((l) => (l || '').slice(0, 2).toLowerCase()).find((l) => l in STRINGS) || 'en';
const T = STRINGS[LANG];
const t = (key, vars = {}) => String(T[key] ?? STRINGS.en[key] ?? key).replace(/\{(\w+)\}/g, (_, k) => (k in vars ? vars[k] : ''));

function translatePage() {
  document.documentElement.lang = LANG;
  document.querySelectorAll('[data-i18n]').forEach((e) => { e.textContent = t(e.dataset.i18n); });
  document.querySelectorAll('[data-i18n-placeholder]').forEach((e) => { e.placeholder = t(e.dataset.i18nPlaceholder); });
  $('prevpage').setAttribute('aria-label', t('prevPage'));
  $('nextpage').setAttribute('aria-label', t('nextPage'));
  $('camselect').setAttribute('aria-label', t('cameraSelect'));
  $('micselect').setAttribute('aria-label', t('micSelect'));
  $('status').textContent = t('notConnected');
  syncButtons();
}

// ------------------------------------------------------------------ the room

const room = new Room({
  iceServers: parseIce(params.get('ice')),
  relayOnly: params.get('relay') === '1',
  simulcast: params.get('simulcast') !== '0',
});
window.moim = room;

// TURN servers from the join API (`ice`: the JSON of its `iceServers`).
function parseIce(text) {
  if (!text) return undefined;
  try { return JSON.parse(text); } catch (_) { setTimeout(() => setStatus('ignoring a malformed ice parameter')); return undefined; }
}

// Page state, kept on the room object for tests: the grid's page (0-based), tile order
// (participant keys; speakers are swapped onto the first page), when each participant last
// spoke, the view ('grid' or 'speaker'; null: chosen by what is shown).
Object.assign(room, { page: 0, pages: 1, order: [], lastSpoke: new Map(), view: null });

// Tiles on screen: one page of PAGE_SIZE (3×3 by default, `?page_size=N`). The room watches
// each tile: one off the page (hidden) or scrolled out of view asks the node for 0×0 and its
// video pauses; it resumes at the next keyframe when shown again.
const PAGE_SIZE = Math.max(1, Math.min(49, Number(params.get('page_size')) || 9));
// In the speaker view and the presentation layout: one large tile and a strip of this many.
const STRIP_SIZE = 6;

function setStatus(text) { $('status').textContent = text; }

function nameOf(id) {
  if (id === room.participantId) return t('you');
  const p = room.participants.get(id);
  return p ? p.name : id;
}

function tile(key) {
  let el = document.querySelector(`.tile[data-participant="${CSS.escape(key)}"]`);
  if (!el) {
    el = document.createElement('div');
    el.className = 'tile';
    el.dataset.participant = key;
    el.tabIndex = 0;
    const v = document.createElement('video');
    v.autoplay = true; v.playsInline = true;
    if (key === room.participantId) v.muted = true;
    const n = document.createElement('span');
    n.className = 'name';
    el.append(v, n);
    $('grid').append(el);
    if (!room.order.includes(key)) room.order.push(key);
    // The room tells the node how large we render this tile's video (its layer), or 0×0.
    if (key !== room.participantId) room.watch(el);
    el.addEventListener('dblclick', () => feature(key));
    el.addEventListener('keydown', (e) => { if (e.key === 'Enter') feature(key); });
    layout();
  }
  const screen = key.endsWith(':screen');
  const id = screen ? key.slice(0, -7) : key;
  const label = screen ? t('screenOf', { name: nameOf(id) }) : nameOf(id);
  el.querySelector('.name').textContent = label;
  el.setAttribute('aria-label', label);
  el.dataset.initial = (label || '?').trim().slice(0, 1).toUpperCase();
  const v = el.querySelector('video');
  el.classList.toggle('has-video', !!(v.srcObject && v.srcObject.getVideoTracks().length));
  return el;
}

function removeTiles(id) {
  document.querySelectorAll(`.tile[data-participant="${CSS.escape(id)}"], .tile[data-participant="${CSS.escape(id + ':screen')}"]`).forEach((e) => e.remove());
}

// A double-click (or Enter) on a tile makes it the large one in the speaker view.
function feature(key) {
  room.featured = key;
  room.view = 'speaker';
  layout();
}

const hasScreen = () => !!document.querySelector('.tile[data-participant$=":screen"]');
// The stage (one large tile and a strip) in the speaker view, for a screen share, and for a
// webinar's viewers; the grid otherwise.
const onStage = () => (room.view ? room.view === 'speaker' : hasScreen() || (room.state === 'connected' && !room.canPublish));

// The large tile: a chosen one, else a screen share, else whoever spoke last, else the first
// with video.
function featuredKey(keys) {
  if (room.featured && keys.includes(room.featured)) return room.featured;
  const screen = keys.find((k) => k.endsWith(':screen'));
  if (screen) return screen;
  const others = keys.filter((k) => k !== room.participantId);
  let best = null;
  for (const k of others) if ((room.lastSpoke.get(k) || 0) > (room.lastSpoke.get(best) || 0)) best = k;
  const withVideo = others.find((k) => document.querySelector(`.tile[data-participant="${CSS.escape(k)}"].has-video:not(.cam-off)`));
  return best || withVideo || others[0] || keys[0];
}

// Orders the tiles (own first, then `room.order`) and shows the current page only.
function layout() {
  const grid = $('grid');
  const byKey = new Map([...grid.querySelectorAll('.tile')].map((e) => [e.dataset.participant, e]));
  room.order = room.order.filter((k) => byKey.has(k) && k !== room.participantId);
  for (const k of byKey.keys()) if (k !== room.participantId && !room.order.includes(k)) room.order.push(k);
  const keys = (byKey.has(room.participantId) ? [room.participantId] : []).concat(room.order);
  const stage = onStage();
  grid.classList.toggle('stage', stage);
  let shown;
  if (stage) {
    const big = featuredKey(keys);
    const strip = keys.filter((k) => k !== big);
    const per = STRIP_SIZE;
    room.pages = Math.max(1, Math.ceil(strip.length / per));
    room.page = Math.max(0, Math.min(room.page, room.pages - 1));
    shown = new Set([big, ...strip.slice(room.page * per, (room.page + 1) * per)]);
    keys.forEach((k) => byKey.get(k).classList.toggle('featured', k === big));
  } else {
    room.pages = Math.max(1, Math.ceil(keys.length / PAGE_SIZE));
    room.page = Math.max(0, Math.min(room.page, room.pages - 1));
    shown = new Set(keys.slice(room.page * PAGE_SIZE, (room.page + 1) * PAGE_SIZE));
    byKey.forEach((e) => e.classList.remove('featured'));
    // As many columns as make the page square (3 for 9 tiles).
    grid.style.setProperty('--cols', String(Math.ceil(Math.sqrt(Math.max(1, shown.size)))));
  }
  keys.forEach((k, i) => {
    const el = byKey.get(k);
    // CSS order, not DOM moves: moving a playing <video> restarts it.
    el.style.order = String(el.classList.contains('featured') ? -1 : i);
    const hide = !shown.has(k);
    if (el.hidden !== hide) { el.hidden = hide; room.updateSize(el); }
  });
  $('pager').hidden = room.pages < 2;
  $('pageinfo').textContent = t('page', { page: room.page + 1, pages: room.pages });
  $('prevpage').disabled = room.page === 0;
  $('nextpage').disabled = room.page >= room.pages - 1;
  $('view').textContent = stage ? t('gridView') : t('speakerView');
  $('view').setAttribute('aria-pressed', String(stage));
  // Sizes change with the layout: re-read every shown tile once it has been laid out.
  requestAnimationFrame(() => byKey.forEach((e) => room.updateSize(e)));
}

// Turns the grid to page `n` (0-based).
room.setPage = (n) => { room.page = n; layout(); return room.page; };
room.pageCount = () => room.pages || 1;
room.setView = (v) => { room.view = v; if (v !== 'speaker') room.featured = null; layout(); };

// Who speaks comes onto the first page: each current speaker not on it takes the place of the
// first-page tile that has gone longest without speaking (the rest of the grid keeps still).
function promoteSpeakers(ids) {
  const now = performance.now();
  for (const id of ids) room.lastSpoke.set(id, now);
  const own = document.querySelector(`.tile[data-participant="${CSS.escape(room.participantId || '')}"]`) ? 1 : 0;
  const slots = (onStage() ? STRIP_SIZE : PAGE_SIZE) - own;
  const order = room.order;
  for (const id of ids) {
    const i = order.indexOf(id);
    if (i < 0 || i < slots) continue;
    let j = -1;
    for (let k = 0; k < Math.min(slots, order.length); k++) {
      if (ids.includes(order[k])) continue;
      if (j < 0 || (room.lastSpoke.get(order[k]) || 0) < (room.lastSpoke.get(order[j]) || 0)) j = k;
    }
    if (j < 0) continue;
    [order[i], order[j]] = [order[j], order[i]];
  }
  layout();
}

// The mic-off, camera-off and hand marks on a participant's tile, and the people list.
function indicators(id) {
  const el = document.querySelector(`.tile[data-participant="${CSS.escape(id)}"]`);
  const { mic, cam } = mutedOf(id);
  if (el) {
    el.classList.toggle('mic-off', mic);
    el.classList.toggle('cam-off', cam);
    el.classList.toggle('hand', room.hands.has(id));
    el.dataset.initial = (nameOf(id) || '?').trim().slice(0, 1).toUpperCase();
  }
  renderPeople();
}

function mutedOf(id) {
  let mic = false; let cam = false;
  if (id === room.participantId) {
    mic = room.isMuted('audio');
    cam = room.isMuted('video');
  } else {
    for (const tr of room.tracks.values()) {
      if (tr.participant_id !== id || !tr.muted) continue;
      if (tr.kind === 'audio' && tr.source === 'microphone') mic = true;
      if (tr.kind === 'video' && tr.source === 'camera') cam = true;
    }
  }
  return { mic, cam };
}

function renderPeople() {
  const ids = room.participantId ? [room.participantId, ...room.participants.keys()] : [...room.participants.keys()];
  $('peopletab').textContent = t('people', { n: ids.length });
  const list = $('people');
  list.replaceChildren(...ids.map((id) => {
    const li = document.createElement('li');
    li.dataset.participant = id;
    li.classList.toggle('speaking', room.speakers.includes(id));
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = id === room.participantId ? `${room.localName || ''} (${t('you')})` : nameOf(id);
    const { mic, cam } = mutedOf(id);
    const hasAudio = id === room.participantId ? !!room.localTrack('audio') : [...room.tracks.values()].some((tr) => tr.participant_id === id && tr.kind === 'audio');
    const hasVideo = id === room.participantId ? !!room.localTrack('video') : [...room.tracks.values()].some((tr) => tr.participant_id === id && tr.kind === 'video');
    const marks = document.createElement('span');
    marks.textContent = `${room.hands.has(id) ? '✋' : ''}${hasAudio ? (mic ? '🔇' : '🎤') : ''}${hasVideo ? (cam ? '🚫' : '📷') : ''}`;
    li.append(who, marks);
    return li;
  }));
}

function addChat(m) {
  const p = document.createElement('p');
  const b = document.createElement('b');
  b.textContent = m.name + ': ';
  p.append(b, document.createTextNode(m.text));
  $('chatlog').append(p);
  $('chatlog').scrollTop = $('chatlog').scrollHeight;
}

// The buttons' labels and states from what is published and muted.
function syncButtons() {
  const a = room.localTrack('audio');
  const v = room.localTrack('video');
  const mic = $('mic'); const vid = $('video'); const scr = $('screen'); const hand = $('hand');
  mic.disabled = !a; vid.disabled = !v;
  mic.textContent = room.isMuted('audio') ? t('unmute') : t('mute');
  mic.setAttribute('aria-pressed', String(room.isMuted('audio')));
  vid.textContent = room.isMuted('video') ? t('startVideo') : t('stopVideo');
  vid.setAttribute('aria-pressed', String(room.isMuted('video')));
  scr.textContent = room.screenStream ? t('stopShare') : t('share');
  scr.setAttribute('aria-pressed', String(!!room.screenStream));
  const raised = room.handRaised;
  hand.textContent = raised ? t('lowerHand') : t('raiseHand');
  hand.setAttribute('aria-pressed', String(raised));
}

// ------------------------------------------------------------------ room events

room.on('state', ({ state, reason }) => {
  if (state === 'connected') setStatus(t('inRoom', { room: room.roomName, id: room.participantId }));
  else if (state === 'connecting') setStatus(t('connecting'));
  else if (state === 'reconnecting') setStatus(reason === 'network changed' ? t('networkChanged') : reason && reason.startsWith('retrying') ? t('retrying', { why: reason }) : t('reconnecting'));
  else if (state === 'left') setStatus(t('left'));
  else if (state === 'disconnected' && reason) setStatus(t('disconnected', { why: reason }));
  if (state !== 'connected') { $('quality').dataset.quality = 'lost'; }
  layout();
});
room.on('mediastate', ({ state }) => {
  if (room.recovering || room.state === 'reconnecting') return;
  if (state === 'connected') setStatus(t('inRoom', { room: room.roomName, id: room.participantId }));
  else if (state !== 'new' && state !== 'connecting') setStatus(t('media', { state }));
});

let firstJoin = true;
room.on('joined', (j) => {
  for (const p of j.participants) { tile(p.id); indicators(p.id); }
  $('cam').disabled = !j.canPublish || !!room.localStream; $('screen').disabled = !j.canPublish;
  $('hand').disabled = false; $('view').disabled = false;
  $('leave').disabled = false;
  $('viewerbadge').hidden = j.canPublish;
  $('chattext').disabled = $('chatsend').disabled = !j.canChat;
  if (!j.canChat) $('chattext').placeholder = t('chatOff');
  $('quality').hidden = false;
  document.body.classList.add('joined');
  if (firstJoin && j.canPublish && params.get('publish') !== '0' && params.has('autojoin')) publishCamera();
  firstJoin = false;
  renderPeople();
  layout();
});
room.on('participantjoined', (p) => { tile(p.id); indicators(p.id); });
room.on('participantleft', ({ participantIds }) => {
  for (const id of participantIds) { removeTiles(id); room.lastSpoke.delete(id); }
  if (room.featured && !document.querySelector(`.tile[data-participant="${CSS.escape(room.featured)}"]`)) room.featured = null;
  layout();
  renderPeople();
});
room.on('trackpublished', (tr) => indicators(tr.participant_id));
room.on('trackmuted', ({ participantId }) => indicators(participantId));
room.on('track', ({ track, participantId, source }) => {
  if (track.kind === 'video' && source === 'screen') {
    // A screen share gets its own tile, and the stage.
    const st = tile(participantId + ':screen');
    st.querySelector('video').srcObject = new MediaStream([track]);
    st.classList.add('has-video');
    track.addEventListener('ended', () => { st.remove(); layout(); });
    track.addEventListener('mute', () => { if (!room.tracks.has(track.id)) { st.remove(); layout(); } });
    room.updateSize(st);
    layout();
    return;
  }
  const el = tile(participantId);
  const v = el.querySelector('video');
  if (!v.srcObject) v.srcObject = new MediaStream();
  v.srcObject.addTrack(track);
  el.classList.toggle('has-video', v.srcObject.getVideoTracks().length > 0);
  track.addEventListener('ended', () => { if (v.srcObject) { v.srcObject.removeTrack(track); el.classList.toggle('has-video', v.srcObject.getVideoTracks().length > 0); } });
  room.updateSize(el);
  if (onStage()) layout();
});
room.on('trackunpublished', ({ trackIds }) => {
  // A screen share that ended: its tile goes.
  document.querySelectorAll('.tile[data-participant$=":screen"]').forEach((el) => {
    const s = el.querySelector('video').srcObject;
    if (s && s.getVideoTracks().some((tr) => trackIds.includes(tr.id))) el.remove();
  });
  layout();
  renderPeople();
});
room.on('activespeakers', ({ participantIds }) => {
  document.querySelectorAll('.tile').forEach((e) => e.classList.toggle('speaking', participantIds.includes(e.dataset.participant)));
  promoteSpeakers(participantIds.filter((id) => id !== room.participantId));
  renderPeople();
});
room.on('hand', ({ participantId, raised }) => {
  if (raised && participantId !== room.participantId) addChat({ name: '✋', text: t('handRaised', { name: nameOf(participantId) }) });
  indicators(participantId);
  syncButtons();
});
room.on('chat', addChat);
room.on('draining', ({ url }) => setStatus(url ? t('moving') : t('draining')));
room.on('error', (e) => { if (e.code !== 'publish_layers') setStatus(t('error', { message: e.message })); });
room.on('reset', () => { $('grid').replaceChildren(); renderPeople(); });
room.on('localtrack', ({ stream, source }) => {
  if (source === 'camera' && stream) {
    const me = tile(room.participantId);
    me.querySelector('video').srcObject = stream;
    me.classList.toggle('has-video', stream.getVideoTracks().length > 0);
    $('cam').disabled = true;
    indicators(room.participantId);
    fillDevices();
  }
  syncButtons();
});
room.on('localmuted', () => { indicators(room.participantId); syncButtons(); });
room.on('quality', ({ quality, rttMs, lossPct }) => {
  const q = $('quality');
  q.dataset.quality = quality;
  q.textContent = T.quality[quality] || quality;
  q.title = t('qualityTitle', { q: T.quality[quality] || quality, rtt: rttMs ?? '–', loss: lossPct ?? '–' });
});

// ------------------------------------------------------------------ actions

async function publishCamera() {
  try {
    const cam = $('camselect').value || undefined;
    const mic = $('micselect').value || undefined;
    await room.publishCamera({ video: cam || true, audio: mic || true });
  } catch (e) {
    setStatus(String(e));
  }
}

// The camera and microphone pickers; changing one switches the device without renegotiating.
async function fillDevices() {
  let devices;
  try { devices = await listDevices(); } catch (_) { return; }
  const fill = (select, list, current) => {
    const keep = current || select.value;
    select.replaceChildren(...list.map((d, i) => {
      const o = document.createElement('option');
      o.value = d.deviceId;
      o.textContent = d.label || `${select.getAttribute('aria-label')} ${i + 1}`;
      return o;
    }));
    if (keep && list.some((d) => d.deviceId === keep)) select.value = keep;
  };
  const settings = (kind) => { const tr = room.localTrack(kind); return tr && tr.getSettings ? tr.getSettings().deviceId : undefined; };
  fill($('camselect'), devices.videoinput, settings('video'));
  fill($('micselect'), devices.audioinput, settings('audio'));
  $('devices').hidden = devices.videoinput.length + devices.audioinput.length === 0;
}
async function switchFrom(select, kind) {
  if (!room.localStream) return;
  try { await room.switchDevice(kind, select.value); } catch (e) { setStatus(String(e)); }
}
$('camselect').onchange = () => switchFrom($('camselect'), 'videoinput');
$('micselect').onchange = () => switchFrom($('micselect'), 'audioinput');
navigator.mediaDevices && navigator.mediaDevices.addEventListener && navigator.mediaDevices.addEventListener('devicechange', fillDevices);

async function devToken(roomName, identity, name) {
  const r = await fetch(`/dev/token?room=${encodeURIComponent(roomName)}&identity=${encodeURIComponent(identity)}&name=${encodeURIComponent(name)}`);
  if (!r.ok) throw new Error(t('noTokenServer'));
  return (await r.text()).trim();
}

async function join(roomName, name) {
  const identity = name.toLowerCase().replace(/[^a-z0-9]+/g, '-') + '-' + Math.random().toString(36).slice(2, 7);
  room.localName = name;
  const token = params.get('token') || (await devToken(roomName, identity, name));
  room.mark('token');
  $('join').disabled = true;
  if (params.has('last_n')) room.lastN = { n: Math.max(0, Number(params.get('last_n')) || 0), pinned: [] };
  await room.connect(token);
}

function leave() {
  room.leave();
  document.body.classList.remove('joined');
  $('grid').replaceChildren();
  ['cam', 'mic', 'video', 'screen', 'hand', 'leave'].forEach((id) => { $(id).disabled = true; });
}

$('joinform').onsubmit = (e) => { e.preventDefault(); join($('room').value, $('name').value).catch((err) => { setStatus(String(err)); $('join').disabled = false; }); };
$('cam').onclick = () => publishCamera();
$('mic').onclick = () => room.toggleMute('audio');
$('video').onclick = () => room.toggleMute('video');
$('screen').onclick = () => (room.screenStream ? room.stopScreen() : room.publishScreen()).catch((e) => setStatus(String(e)));
$('hand').onclick = () => { room.raiseHand(!room.handRaised); syncButtons(); };
$('view').onclick = () => room.setView(onStage() ? 'grid' : 'speaker');
$('leave').onclick = leave;
$('prevpage').onclick = () => room.setPage(room.page - 1);
$('nextpage').onclick = () => room.setPage(room.page + 1);
$('chatform').onsubmit = (e) => { e.preventDefault(); room.sendChat($('chattext').value); $('chattext').value = ''; };
for (const [tab, panel] of [['chattab', 'chatpanel'], ['peopletab', 'peoplepanel']]) {
  $(tab).onclick = () => {
    for (const [t2, p2] of [['chattab', 'chatpanel'], ['peopletab', 'peoplepanel']]) {
      $(t2).setAttribute('aria-selected', String(t2 === tab));
      $(p2).hidden = p2 !== panel;
    }
  };
}

// Keyboard: M mute, V video, H hand, S speaker/grid view, ← → pages (not while typing).
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || (e.target instanceof Element && e.target.closest('input, select, textarea'))) return;
  const click = (id) => { if (!$(id).disabled) { $(id).click(); e.preventDefault(); } };
  switch (e.key.toLowerCase()) {
    case 'm': click('mic'); break;
    case 'v': click('video'); break;
    case 'h': click('hand'); break;
    case 's': click('view'); break;
    case 'arrowleft': click('prevpage'); break;
    case 'arrowright': click('nextpage'); break;
  }
});

translatePage();
if (params.get('room')) $('room').value = params.get('room');
$('name').value = params.get('name') || '';
if (params.has('autojoin')) join($('room').value, $('name').value || 'guest').catch((e) => setStatus(String(e)));
// Two clients of one person must not fight over the session: leaving the page leaves.
window.addEventListener('pagehide', () => { room.left = true; });
