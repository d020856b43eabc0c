// moim client library: join a moim meeting from a browser. One ES module, no dependencies and
// no build step; every media node serves it at /sdk/moim.js (types at /sdk/moim.d.ts).
//
//   import { Room } from '/sdk/moim.js';
//   const room = new Room();
//   room.on('track', ({ track, participantId }) => show(participantId, track));
//   await room.connect(token);
//   await room.publishCamera();
//
// A Room keeps two peer connections to its node: a publish connection it offers (camera,
// microphone, screen) and a subscribe connection the node offers (everyone else's tracks and
// the `chat` data channel). It recovers on its own: a changed network restarts ICE on the
// same node; a node that stops answering is left for the node the meeting runs on now (only
// URLs from its own node or from the operator that node names are followed).

export const VERSION = '0.2.0';

// Simulcast encodings by layer, as the node numbers them (q, h, f: quarter, half, full).
const RID_LAYER = { q: 0, h: 1, f: 2 };
const SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', maxBitrate: 1500000 },
];
const CAMERA = { width: 1280, height: 720 };

// How long `disconnected` may last before ICE restarts (a brief loss recovers by itself).
const DISCONNECTED_GRACE_MS = 400;
// An ICE restart that has not reconnected both connections after this long gives up on the
// node (see restartIce).
const RESTART_GIVE_UP_MS = 5000;
// The node answers a restart's offers within milliseconds over the signalling socket; one that
// has not after this long is not answering at all (its machine is lost, or our socket died with
// the old network) and the room reconnects without waiting for the give-up above.
const RESTART_UNANSWERED_MS = 2000;
// A node that stopped answering is tried once more, this briefly, before the operator is asked
// for another: after a network change a new socket to it works at once.
const QUICK_ATTEMPT_MS = 1000;
// After an ICE restart, further triggers within this long are the same break (the restart's
// checks and keyframe take ~0.5 s on a short path).
const RESTART_SETTLE_MS = 2000;
// Media silence: RTP was arriving on the subscribe connection and has stopped for this long
// (video sends ~30 packets a second, audio 50): the path under us changed (a NAT rebinding,
// Wi-Fi to cellular), and browsers take seconds more to call the connection `disconnected`.
const MEDIA_SILENCE_MS = 600;
const WATCHDOG_EVERY_MS = 200;
// Incoming silence while the node still answers the publish connection is most likely the
// sources' (a remote publisher's node died, its region's link is being re-planned): the path
// works, and an ICE restart would only delay the media coming back. Only a long silence then
// restarts (a path that broke on the subscribe connection alone).
const SOURCE_SILENCE_MS = 3000;
// How long one attempt to join a node may take before the next is tried, and the backoff
// between rounds of attempts.
const JOIN_ATTEMPT_MS = 3000;
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 4000;
// How often connection quality is measured.
const QUALITY_EVERY_MS = 2000;

/** The WebSocket URL of a node's signalling endpoint, from its http(s) origin. */
export function signallingUrl(base) {
  const u = new URL('/ws', base);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

/** Cameras, microphones and speakers this page may use (labels need a granted permission). */
export async function listDevices() {
  const all = await navigator.mediaDevices.enumerateDevices();
  const of = (kind) => all.filter((d) => d.kind === kind).map((d) => ({ deviceId: d.deviceId, label: d.label, kind }));
  return { videoinput: of('videoinput'), audioinput: of('audioinput'), audiooutput: of('audiooutput') };
}

/** Connection quality from loss and round-trip time: 'excellent', 'good', 'poor' or 'lost'. */
export function rateQuality(lossPct, rttMs, connected) {
  if (!connected) return 'lost';
  if (lossPct < 2 && rttMs < 150) return 'excellent';
  if (lossPct < 6 && rttMs < 400) return 'good';
  return 'poor';
}

export class Room extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.url] the node's http(s) origin (default: the page's)
   * @param {RTCIceServer[]} [options.iceServers] TURN servers (the join API's `iceServers`)
   * @param {boolean} [options.relayOnly] send all media through TURN
   * @param {boolean} [options.simulcast] publish the camera in three layers (default true)
   */
  constructor(options = {}) {
    super();
    this.options = { simulcast: true, ...options };
    this.participantId = null;
    this.roomName = null;
    this.participants = new Map(); // id -> {id, identity, name}
    this.tracks = new Map(); // node track id -> TrackInfo (+ muted)
    this.chatLog = [];
    this.speakers = [];
    this.errors = [];
    this.canPublish = false;
    this.canChat = true;
    this.ws = null;
    this.pub = null;
    this.sub = null;
    this.chat = null;
    this.token = null;
    // Camera and microphone (one MediaStream) and a screen share, when published.
    this.localStream = null;
    this.screenStream = null;
    // Where the room is connected after a move (null: options.url), how many times it moved.
    this.node = null;
    this.moves = 0;
    // How to come back if the node stops answering (the node's `resume` message).
    this.resume = null;
    // Each recovery: why, when it started and ended (ms since page load), where it landed.
    this.recoveries = [];
    // ICE restarts (a changed network: same node, no new join) and what set each off.
    this.iceRestarts = 0;
    this.restartLog = [];
    this.recovering = false;
    this.left = false;
    this.state = 'disconnected';
    // Milliseconds since page load at each step of the first join: token, ws_open, joined,
    // offer, answer_sent, media_connected, track.
    this.marks = {};
    // Size last asked for per received video track ([w, h]; 0 = paused at the node).
    this.sizes = new Map();
    // Dynacast: the highest layer the node wants of each published track (null: none).
    this.publishedLayers = {};
    // Last-N, kept across rejoins.
    this.lastN = null;
    // Participants with a hand raised (ids, ours included), and whether ours is (kept across
    // rejoins).
    this.hands = new Set();
    this.handRaised = false;
    this.quality = { quality: 'lost', rttMs: null, lossPct: null };
    this.declared = []; // [{track_id, source}] as in the last publish offer
    this.senders = new Map(); // declared track id -> RTCRtpSender (kept through device switches)
    this.republish = false;
    this.watched = new Map(); // element -> {visible}
    this.timers = [
      setInterval(() => this.publishWatchdog(), WATCHDOG_EVERY_MS),
      setInterval(() => this.subscribeWatchdog(), WATCHDOG_EVERY_MS),
      setInterval(() => this.measureQuality(), QUALITY_EVERY_MS),
    ];
    this.visibility = typeof IntersectionObserver === 'undefined' ? null : new IntersectionObserver((entries) => {
      for (const e of entries) {
        const w = this.watched.get(e.target);
        if (w) { w.visible = e.isIntersecting; this.updateSize(e.target); }
      }
    }, { root: null, threshold: 0 });
    this.resizes = typeof ResizeObserver === 'undefined' ? null : new ResizeObserver((entries) => {
      for (const e of entries) this.updateSize(e.target);
    });
  }

  /** `room.on('track', (detail) => …)`: listens to an event's detail; returns a function that stops. */
  on(type, fn) {
    const h = (ev) => fn(ev.detail, ev);
    this.addEventListener(type, h);
    return () => this.removeEventListener(type, h);
  }

  emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  mark(name) { if (!(name in this.marks)) this.marks[name] = Math.round(performance.now()); }

  setState(state, reason) {
    this.state = state;
    this.emit('state', { state, reason: reason || null });
  }

  fail(code, e) {
    const err = { code, message: String((e && e.message) || e) };
    this.errors.push(err);
    this.emit('error', err);
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  /** Joins with `token` at the node (`url`, default options.url or the page's origin). */
  async connect(token, { url } = {}) {
    this.left = false;
    this.token = token;
    if (url) this.node = url;
    this.setState('connecting');
    await this.open(signallingUrl(this.node || this.options.url || location.origin), token);
  }

  /** Leaves the meeting: closes both connections and stops the camera, mic and screen. */
  leave() {
    this.left = true;
    this.send({ type: 'leave' });
    if (this.ws) this.ws.close();
    [this.pub, this.sub].forEach((pc) => pc && pc.close());
    for (const s of [this.localStream, this.screenStream]) if (s) s.getTracks().forEach((t) => t.stop());
    this.localStream = null; this.screenStream = null;
    this.setState('left');
  }

  /** Stops the room's timers (after leave, when the Room object is thrown away). */
  close() {
    if (!this.left) this.leave();
    this.timers.forEach(clearInterval);
    if (this.visibility) this.visibility.disconnect();
    if (this.resizes) this.resizes.disconnect();
  }

  // ---------------------------------------------------------------- signalling

  // Opens signalling at `wsUrl` and joins with `token`; resolves once joined. Rejects when the
  // socket closes first, the node refuses, or `timeoutMs` passes.
  open(wsUrl, token, timeoutMs) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(wsUrl);
      this.ws = ws;
      let joined = false;
      const fail = (why) => {
        clearTimeout(timer);
        ws.onclose = null; ws.onmessage = null;
        if (ws.readyState <= WebSocket.OPEN) ws.close();
        if (this.ws === ws) this.ws = null;
        reject(new Error(why));
      };
      const timer = timeoutMs ? setTimeout(() => fail('timed out joining ' + wsUrl), timeoutMs) : null;
      ws.onopen = () => { this.mark('ws_open'); ws.send(JSON.stringify({ type: 'join', token })); };
      ws.onmessage = (ev) => {
        let msg;
        try { msg = JSON.parse(ev.data); } catch (_) { return; }
        if (!joined && msg.type === 'error') { this.errors.push(msg); fail(`${msg.code}: ${msg.message}`); return; }
        if (!joined && msg.type === 'joined') { joined = true; clearTimeout(timer); resolve(); }
        this.onMessage(msg).catch((e) => this.fail('client', e));
      };
      ws.onclose = (ev) => {
        if (!joined) { fail(`closed (${ev.code})`); return; }
        if (this.ws !== ws || this.left) return;
        this.recover(`signalling closed (${ev.code}${ev.reason ? ' ' + ev.reason : ''})`);
      };
    });
  }

  async onMessage(msg) {
    switch (msg.type) {
      case 'joined':
        this.mark('joined');
        // A new session (first join, or a rejoin elsewhere) knows no sizes yet.
        this.sizes.clear();
        this.participantId = msg.participant_id;
        this.roomName = msg.room;
        this.canPublish = !!msg.can_publish;
        this.canChat = msg.can_chat !== false;
        for (const p of msg.participants) {
          this.participants.set(p.id, p);
          if (p.hand_raised) this.hands.add(p.id);
        }
        for (const t of msg.tracks) this.tracks.set(t.track_id, t);
        this.setState('connected');
        this.emit('joined', { participantId: msg.participant_id, room: msg.room, participants: msg.participants, tracks: msg.tracks, canPublish: this.canPublish, canChat: this.canChat });
        if (this.canPublish && this.republish) {
          this.publishCamera().catch((e) => this.fail('publish', e));
        }
        this.republish = false;
        if (this.lastN) this.setLastN(this.lastN.n, this.lastN.pinned);
        if (this.handRaised) this.raiseHand(true);
        break;
      case 'resume':
        this.resume = msg;
        this.token = msg.token;
        break;
      case 'subscribe_offer': {
        this.mark('offer');
        this.subscribeOffers = (this.subscribeOffers || 0) + 1;
        if (!this.sub) this.sub = this.newSubscribeConnection();
        await this.sub.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
        const answer = await this.sub.createAnswer();
        await this.sub.setLocalDescription(answer);
        this.send({ type: 'subscribe_answer', sdp: this.sub.localDescription.sdp });
        this.mark('answer_sent');
        break;
      }
      case 'publish_answer':
        await this.pub.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        break;
      case 'participant_joined':
        this.participants.set(msg.participant.id, msg.participant);
        this.emit('participantjoined', msg.participant);
        break;
      case 'participant_left':
      case 'participants_left': {
        const ids = msg.participant_ids || [msg.participant_id];
        for (const id of ids) { this.participants.delete(id); this.hands.delete(id); }
        this.emit('participantleft', { participantIds: ids });
        break;
      }
      case 'track_published':
        this.tracks.set(msg.track.track_id, msg.track);
        this.emit('trackpublished', msg.track);
        break;
      case 'track_muted': {
        const t = this.tracks.get(msg.track_id);
        if (t) t.muted = msg.muted;
        this.emit('trackmuted', { trackId: msg.track_id, participantId: msg.participant_id, muted: msg.muted });
        break;
      }
      case 'hand_raised':
        if (msg.raised) this.hands.add(msg.participant_id); else this.hands.delete(msg.participant_id);
        this.emit('hand', { participantId: msg.participant_id, raised: msg.raised });
        break;
      case 'track_unpublished':
      case 'tracks_unpublished': {
        const ids = msg.track_ids || [msg.track_id];
        for (const id of ids) this.tracks.delete(id);
        this.emit('trackunpublished', { trackIds: ids });
        break;
      }
      case 'active_speakers':
        this.speakers = msg.participant_ids;
        this.emit('activespeakers', { participantIds: msg.participant_ids });
        break;
      case 'publish_layers':
        // Dynacast: nobody wants more of this track than `max_layer` (null: nobody watches
        // it), so the encodings above it stop, saving this machine's encoder and uplink.
        await this.setPublishedLayers(msg.track_id, msg.max_layer);
        break;
      case 'chat':
        this.addChat(msg);
        break;
      case 'draining':
        this.emit('draining', { url: msg.url || null });
        if (msg.url) this.moveTo(msg.url).catch((e) => this.fail('move', e));
        break;
      case 'error':
        this.errors.push(msg);
        // Joined again elsewhere (another tab or device): this one leaves for good, or the
        // two would take the seat from each other for ever.
        if (msg.code === 'replaced') { this.left = true; this.setState('left', 'replaced'); }
        this.emit('error', { code: msg.code, message: msg.message });
        break;
    }
  }

  addChat(m) {
    const entry = { from: m.from, name: m.name, text: m.text, tsMs: m.ts_ms || Date.now() };
    this.chatLog.push(entry);
    if (this.chatLog.length > 1000) this.chatLog.shift();
    this.emit('chat', entry);
  }

  /** Raises or lowers our hand; everyone sees it (`hand`), and it is kept across rejoins. */
  raiseHand(raised = true) {
    this.handRaised = !!raised;
    this.send({ type: 'raise_hand', raised: this.handRaised });
  }

  /** Sends a chat message to everyone in the room (over the data channel when it is open). */
  sendChat(text) {
    if (!text) return;
    if (this.chat && this.chat.readyState === 'open') this.chat.send(JSON.stringify({ text }));
    else this.send({ type: 'chat', text });
  }

  // ---------------------------------------------------------------- receiving

  pcConfig() {
    const cfg = { bundlePolicy: 'max-bundle' };
    if (this.options.iceServers) cfg.iceServers = this.options.iceServers;
    if (this.options.relayOnly) cfg.iceTransportPolicy = 'relay';
    return cfg;
  }

  newSubscribeConnection() {
    const pc = new RTCPeerConnection(this.pcConfig());
    pc.ontrack = (ev) => {
      this.mark('track');
      const stream = ev.streams[0];
      if (!stream) return;
      const info = this.tracks.get(ev.track.id) || null;
      this.emit('track', { track: ev.track, participantId: stream.id, info, source: info ? info.source : (ev.track.kind === 'audio' ? 'microphone' : 'camera') });
    };
    pc.ondatachannel = (ev) => {
      if (ev.channel.label !== 'chat') return;
      this.chat = ev.channel;
      ev.channel.onmessage = (m) => {
        try { this.addChat(JSON.parse(m.data)); } catch (_) { /* ignore garbage */ }
      };
    };
    this.watchPath(pc);
    return pc;
  }

  /**
   * Asks the node for at most `width`×`height` (device pixels) of received video track
   * `trackId`; 0×0 pauses it at the node. Sent only when it changes.
   */
  setVideoSize(trackId, width, height) {
    const w = Math.max(0, Math.round(width));
    const h = Math.max(0, Math.round(height));
    const last = this.sizes.get(trackId);
    if (last && last[0] === w && last[1] === h) return;
    this.sizes.set(trackId, [w, h]);
    this.send({ type: 'layer_preference', track_id: trackId, max_width: w, max_height: h });
  }

  /**
   * Sizes the video tracks shown in `element` (its `<video>`'s srcObject, or its own) from what
   * is on screen, from now on: its rendered size while visible, 0×0 (paused at the node) while
   * hidden or scrolled out of view (`data-visible="0"`). Returns a function that stops
   * watching.
   */
  watch(element) {
    if (!this.watched.has(element)) {
      this.watched.set(element, { visible: true });
      if (this.visibility) this.visibility.observe(element);
      if (this.resizes) this.resizes.observe(element);
    }
    this.updateSize(element);
    return () => {
      this.watched.delete(element);
      if (this.visibility) this.visibility.unobserve(element);
      if (this.resizes) this.resizes.unobserve(element);
    };
  }

  /** Re-reads a watched element's size and visibility (call after showing or hiding it). */
  updateSize(element) {
    const w = this.watched.get(element);
    if (!w) return;
    element.dataset.visible = w.visible ? '1' : '0';
    const video = element.srcObject !== undefined ? element : element.querySelector('video');
    const stream = video && video.srcObject;
    if (!stream) return;
    const shown = w.visible && !element.hidden && element.isConnected && element.getClientRects().length > 0;
    const ratio = globalThis.devicePixelRatio || 1;
    for (const t of stream.getVideoTracks()) {
      if (!this.tracks.has(t.id)) continue;
      this.setVideoSize(t.id, shown ? element.clientWidth * ratio : 0, shown ? element.clientHeight * ratio : 0);
    }
  }

  /**
   * Last-N: receive video only from the `n` most recent speakers plus `pinned` participant ids
   * (`n` null: everyone). Kept across rejoins.
   */
  setLastN(n, pinned = []) {
    this.lastN = n === null || n === undefined ? null : { n, pinned };
    this.send({ type: 'last_n', n: this.lastN ? this.lastN.n : null, pinned: this.lastN ? this.lastN.pinned : [] });
  }

  /** Frames decoded per received video track, from getStats(). */
  async videoStats() {
    const out = {};
    if (!this.sub) return out;
    const report = await this.sub.getStats();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out[s.trackIdentifier || s.id] = { framesDecoded: s.framesDecoded || 0, frameHeight: s.frameHeight || 0, freezeCount: s.freezeCount || 0 };
      }
    });
    return out;
  }

  // ---------------------------------------------------------------- publishing

  async publishOffer() {
    const offer = await this.pub.createOffer();
    await this.pub.setLocalDescription(offer);
    this.send({ type: 'publish_offer', sdp: this.pub.localDescription.sdp, tracks: this.declared });
  }

  ensurePublishConnection() {
    if (!this.pub) { this.pub = new RTCPeerConnection(this.pcConfig()); this.watchPath(this.pub); }
  }

  addTrack(track, stream, source, sendEncodings) {
    const init = { direction: 'sendonly', streams: [stream] };
    if (sendEncodings) init.sendEncodings = sendEncodings;
    const tr = this.pub.addTransceiver(track, init);
    this.declared.push({ track_id: track.id, source });
    this.senders.set(track.id, tr.sender);
  }

  /**
   * Publishes camera and microphone (`audio`/`video`: false to leave one out; a deviceId to
   * pick one). After a reconnect the same tracks are published again.
   */
  async publishCamera({ audio = true, video = true } = {}) {
    const live = this.localStream && this.localStream.getTracks().some((t) => t.readyState === 'live');
    const constraint = (want, extra) => (want === false ? false : { ...extra, ...(typeof want === 'string' ? { deviceId: { exact: want } } : {}) });
    const stream = live ? this.localStream : await navigator.mediaDevices.getUserMedia({
      audio: constraint(audio, {}), video: constraint(video, CAMERA),
    });
    this.localStream = stream;
    this.ensurePublishConnection();
    const [a] = stream.getAudioTracks();
    const [v] = stream.getVideoTracks();
    if (a) this.addTrack(a, stream, 'microphone');
    if (v) this.addTrack(v, stream, 'camera', this.options.simulcast ? SIMULCAST.map((e) => ({ ...e })) : [{}]);
    this.emit('localtrack', { stream, source: 'camera' });
    await this.publishOffer();
    // Muted before a reconnect: the node we are on now hears it too.
    for (const t of stream.getTracks()) if (!t.enabled) this.send({ type: 'mute', track_id: this.declaredId(t), muted: true });
    return stream;
  }

  /** Shares a screen or window; resolves to its stream. Ending it in the browser unpublishes it. */
  async publishScreen() {
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    this.ensurePublishConnection();
    const [video] = stream.getVideoTracks();
    this.screenStream = stream;
    this.addTrack(video, stream, 'screen');
    video.addEventListener('ended', () => this.stopScreen().catch((e) => this.fail('screen', e)));
    this.emit('localtrack', { stream, source: 'screen' });
    await this.publishOffer();
    return stream;
  }

  /** Stops sharing the screen. */
  async stopScreen() {
    const s = this.screenStream;
    if (!s) return;
    this.screenStream = null;
    for (const t of s.getTracks()) {
      t.stop();
      const sender = this.senders.get(t.id);
      this.senders.delete(t.id);
      this.declared = this.declared.filter((d) => d.track_id !== t.id);
      if (sender && this.pub && this.pub.signalingState !== 'closed') this.pub.removeTrack(sender);
    }
    this.emit('localtrack', { stream: null, source: 'screen' });
    if (this.pub) await this.publishOffer();
  }

  // The id a local track was declared under (a switched device keeps its first track's id).
  declaredId(track) {
    for (const [id, sender] of this.senders) if (sender.track === track) return id;
    return track.id;
  }

  localTrack(kind) {
    const s = this.localStream;
    return (s && (kind === 'audio' ? s.getAudioTracks() : s.getVideoTracks())[0]) || null;
  }

  /** Whether our microphone (`audio`) or camera (`video`) is muted. */
  isMuted(kind) {
    const t = this.localTrack(kind);
    return !!t && !t.enabled;
  }

  /**
   * Mutes or unmutes our microphone (`audio`) or camera (`video`): the track sends silence or
   * black with no renegotiation, and everyone sees it (`trackmuted`).
   */
  setMuted(kind, muted) {
    const t = this.localTrack(kind);
    if (!t) return false;
    t.enabled = !muted;
    this.send({ type: 'mute', track_id: this.declaredId(t), muted });
    this.emit('localmuted', { kind, muted });
    return true;
  }

  toggleMute(kind) { return this.setMuted(kind, !this.isMuted(kind)); }

  /**
   * Switches camera (`videoinput`) or microphone (`audioinput`) to `deviceId` while publishing,
   * with no renegotiation: the sender's track is replaced; mute state is kept.
   */
  async switchDevice(kind, deviceId) {
    const video = kind === 'videoinput';
    const old = this.localTrack(video ? 'video' : 'audio');
    const constraints = video ? { video: { ...CAMERA, deviceId: { exact: deviceId } } } : { audio: { deviceId: { exact: deviceId } } };
    const fresh = await navigator.mediaDevices.getUserMedia(constraints);
    const [track] = video ? fresh.getVideoTracks() : fresh.getAudioTracks();
    if (!old || !this.localStream) {
      // Not publishing yet: remember the choice as the stream to publish.
      this.localStream = this.localStream || new MediaStream();
      this.localStream.addTrack(track);
      this.emit('localtrack', { stream: this.localStream, source: 'camera' });
      return track;
    }
    track.enabled = old.enabled;
    const id = this.declaredId(old);
    const sender = this.senders.get(id);
    if (sender) await sender.replaceTrack(track);
    this.localStream.removeTrack(old);
    this.localStream.addTrack(track);
    old.stop();
    this.emit('localtrack', { stream: this.localStream, source: 'camera', kind });
    return track;
  }

  async setPublishedLayers(trackId, maxLayer) {
    this.publishedLayers[trackId] = maxLayer;
    const sender = this.senders.get(trackId);
    if (!sender) return;
    const p = sender.getParameters();
    if (!p.encodings || !p.encodings.length) return;
    p.encodings.forEach((e, i) => { e.active = maxLayer !== null && (RID_LAYER[e.rid] ?? i) <= maxLayer; });
    try { await sender.setParameters(p); } catch (e) { this.fail('publish_layers', e); }
  }

  // ---------------------------------------------------------------- staying connected

  // A peer connection whose path went quiet: ICE `disconnected` for a moment, or `failed`.
  // With signalling still up the network changed under us: restart ICE on the same node.
  // With signalling gone too the node is gone: recover elsewhere.
  watchPath(pc) {
    let timer = null;
    pc.addEventListener('connectionstatechange', () => {
      const st = pc.connectionState;
      if (st === 'connected') { this.mark('media_connected'); clearTimeout(timer); timer = null; }
      this.emit('mediastate', { connection: pc === this.pub ? 'publish' : 'subscribe', state: st });
      if ((st === 'disconnected' || st === 'failed') && !timer) {
        timer = setTimeout(() => {
          timer = null;
          if (pc !== this.pub && pc !== this.sub) return;
          if (pc.connectionState === 'connected') return;
          if (this.ws && this.ws.readyState === WebSocket.OPEN) this.restartIce('ice ' + pc.connectionState);
          else this.recover('media path lost');
        }, st === 'failed' ? 0 : DISCONNECTED_GRACE_MS);
      }
    });
  }

  // Media going out on the publish connection while nothing comes back from the node (it sends
  // congestion feedback several times a second and a report every second while our media
  // reaches it). A NAT that remapped only this connection's port shows up here first.
  async publishWatchdog() {
    const pc = this.pub;
    if (!pc || this.recovering || document.hidden) return;
    let sent = 0;
    let back = 0;
    try {
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp') sent += s.packetsSent || 0;
        if (s.type === 'transport') back += s.bytesReceived || 0;
      });
    } catch (_) { return; }
    const w = (this.pubWatchdog ||= { pc: null, sent: 0, back: 0, at: 0, fired: false });
    const now = performance.now();
    if (w.pc !== pc || back > w.back) {
      if (back > w.back) this.pubFeedbackAt = now;
      w.pc = pc; w.back = back; w.sent = sent; w.at = now; w.fired = false;
      return;
    }
    // Not sending (muted, nothing published): nothing to judge.
    if (sent === w.sent) { w.at = now; return; }
    w.sent = sent;
    if (back > 0 && !w.fired && now - w.at > MEDIA_SILENCE_MS) {
      w.fired = true;
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.restartIce('no feedback on the publish connection');
      else this.recover('no feedback on the publish connection');
    }
  }

  // Watches the subscribe connection for media silence; restarts ICE once per silence.
  async subscribeWatchdog() {
    const pc = this.sub;
    if (!pc || this.recovering || document.hidden) return;
    let packets = 0;
    let streams = 0;
    const counted = [];
    try {
      (await pc.getStats()).forEach((s) => {
        // Video paused at our request is silent by design.
        const paused = s.kind === 'video' && (this.sizes.get(s.trackIdentifier) || [1])[0] === 0;
        if (s.type === 'inbound-rtp' && !paused) { packets += s.packetsReceived || 0; streams++; counted.push(s.id); }
      });
    } catch (_) { return; }
    const w = (this.watchdog ||= { pc: null, packets: 0, at: 0, fired: false, streams: '' });
    const now = performance.now();
    // A stream paused or resumed changes what is summed: start counting afresh.
    const ids = counted.sort().join(',');
    if (w.pc !== pc || packets > w.packets || ids !== w.streams) {
      w.pc = pc; w.packets = packets; w.at = now; w.fired = false; w.streams = ids;
      return;
    }
    const pathWorks = this.pub && now - (this.pubFeedbackAt || -1e9) < MEDIA_SILENCE_MS;
    const silence = pathWorks ? SOURCE_SILENCE_MS : MEDIA_SILENCE_MS;
    if (streams > 0 && packets > 0 && !w.fired && now - w.at > silence) {
      w.fired = true;
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.restartIce('incoming media silent');
      else this.recover('media silent');
    }
  }

  // Connection quality from the node's view of our publish connection (its receiver reports:
  // loss and round trip) and our view of the subscribe connection (loss), every 2 s.
  async measureQuality() {
    const pcs = [this.pub, this.sub].filter(Boolean);
    if (!pcs.length || this.left) return;
    let rtt = null;
    let lost = 0; // cumulative, what we receive
    let received = 0;
    let upLoss = 0; // the node's latest report of what reaches it, a fraction
    try {
      for (const pc of pcs) {
        (await pc.getStats()).forEach((s) => {
          if (s.type === 'candidate-pair' && s.nominated && s.currentRoundTripTime !== undefined) rtt = Math.max(rtt || 0, s.currentRoundTripTime * 1000);
          if (s.type === 'inbound-rtp') { lost += Math.max(0, s.packetsLost || 0); received += s.packetsReceived || 0; }
          if (s.type === 'remote-inbound-rtp' && s.fractionLost !== undefined) upLoss = Math.max(upLoss, s.fractionLost);
        });
      }
    } catch (_) { return; }
    // Loss since the last look on what we receive, and the node's view of what we send: the
    // worse of the two.
    const q = this.qualityBase || { lost, received };
    const dLost = Math.max(0, lost - q.lost);
    const dRecv = Math.max(0, received - q.received);
    this.qualityBase = { lost, received };
    const downPct = dRecv + dLost > 0 ? (100 * dLost) / (dRecv + dLost) : 0;
    const lossPct = Math.max(downPct, upLoss * 100);
    const connected = pcs.every((pc) => pc.connectionState === 'connected') && !this.recovering;
    const next = { quality: rateQuality(lossPct, rtt || 0, connected), rttMs: rtt === null ? null : Math.round(rtt), lossPct: Math.round(lossPct * 10) / 10 };
    const changed = next.quality !== this.quality.quality;
    this.quality = next;
    if (changed) this.emit('quality', next);
  }

  // Restarts ICE on both connections, on the node we are on: new ICE credentials, the same
  // DTLS session, tracks and ids. The node answers the publish re-offer and sends a fresh
  // subscribe offer.
  async restartIce(why) {
    const settling = !!this.restartingIce || performance.now() - (this.restartedAt || -1e9) < RESTART_SETTLE_MS;
    this.restartLog.push({ at: Date.now(), why, skipped: settling });
    if (this.restartLog.length > 20) this.restartLog.shift();
    // One restart per incident: both watchdogs (and ICE state changes) see the same break, and
    // a second restart right after the first would throw away its credentials mid-check.
    if (settling) return;
    this.restartingIce = true;
    this.restartedAt = performance.now();
    this.iceRestarts++;
    this.setState('reconnecting', 'network changed');
    const ws = this.ws;
    const offersBefore = this.subscribeOffers || 0;
    try {
      if (this.pub) { this.pub.restartIce(); await this.publishOffer(); }
      if (this.sub) this.send({ type: 'ice_restart' });
    } finally {
      this.restartingIce = false;
    }
    const connected = () => [this.pub, this.sub].every((pc) => !pc || pc.connectionState === 'connected');
    // The node took part in the restart: it answered the publish re-offer and sent a fresh
    // subscribe offer. A connection still reads `connected` for seconds after its path died
    // (until consent checks fail), so that alone does not mean the restart worked.
    const answered = () => (!this.pub || this.pub.signalingState === 'stable') && (!this.sub || (this.subscribeOffers || 0) > offersBefore);
    const back = () => {
      if (this.ws === ws && !this.recovering && !this.left && this.state === 'reconnecting' && connected()) this.setState('connected');
    };
    for (const pc of [this.pub, this.sub]) if (pc) pc.addEventListener('connectionstatechange', back);
    back();
    // A node whose machine is gone leaves the socket looking open (no reset comes back) for
    // minutes: a restart it has not answered, or that has not brought the connections back in
    // time, counts as a dead node, and the room reconnects.
    setTimeout(() => {
      if (this.ws !== ws || this.left || this.recovering || answered()) return;
      this.recover('ICE restart not answered', { unanswered: true });
    }, RESTART_UNANSWERED_MS);
    setTimeout(() => {
      if (this.ws !== ws || this.left || this.recovering) return;
      if (connected() && answered()) { back(); return; }
      this.recover('ICE restart did not complete', { unanswered: !answered() });
    }, RESTART_GIVE_UP_MS);
  }

  // Closes everything of the current session except the local media (a reconnect publishes
  // it again).
  teardown() {
    const old = this.ws;
    this.ws = null;
    if (old) {
      old.onclose = null; old.onmessage = null;
      if (old.readyState === WebSocket.OPEN) old.send(JSON.stringify({ type: 'leave' }));
      old.close();
    }
    [this.pub, this.sub].forEach((pc) => pc && pc.close());
    this.pub = null; this.sub = null; this.chat = null;
    this.declared = [];
    this.senders.clear();
    if (this.screenStream) { this.screenStream.getTracks().forEach((t) => t.stop()); this.screenStream = null; }
    this.participants.clear(); this.tracks.clear(); this.hands.clear();
    this.emit('reset', {});
  }

  // The meeting's share on this node moved to another node (it drains for scale-in): leave
  // here and join there with the same token (every node of a deployment checks the same
  // tokens), publishing again what was published.
  async moveTo(url) {
    this.moves++;
    this.node = url;
    this.republish = !!this.localStream;
    this.teardown();
    this.setState('reconnecting', 'moved');
    await this.open(signallingUrl(url), this.token);
    this.emit('moved', { url });
  }

  // The node we were on stopped answering (signalling closed, or the media path died with
  // it). Join again, without the person doing anything: the same node first (it may have been
  // the network), then the node the operator names now, then the meeting's other nodes nearest
  // first; rounds repeat with backoff until the token runs out. Only URLs from our own node
  // (its `resume` message) or from the operator it named are followed.
  // `unanswered`: the node stopped answering on a socket that looks open (a lost machine, or
  // our socket died with the old network), so the first round tries it only briefly before
  // asking the operator, instead of waiting out a whole join attempt there.
  async recover(reason, { unanswered = false } = {}) {
    if (this.recovering || this.left) return;
    this.recovering = true;
    const record = { reason, started: Math.round(performance.now()), ended: null, node: null, attempts: 0 };
    this.recoveries.push(record);
    this.setState('reconnecting', reason);
    const lost = this.node || this.options.url || location.origin;
    this.republish = !!this.localStream;
    this.teardown();
    let delay = BACKOFF_FIRST_MS;
    const unreachable = [];
    let quick = unanswered;
    try {
      while (!this.left) {
        const r = this.resume;
        if (r && r.expires_at * 1000 < Date.now()) throw new Error('the meeting token expired while reconnecting');
        const tried = new Set();
        const attempt = async (url, token, ms = JOIN_ATTEMPT_MS) => {
          if (!url || tried.has(url)) return false;
          tried.add(url);
          record.attempts++;
          try {
            await this.open(signallingUrl(url), token, ms);
            this.node = url;
            this.token = token;
            record.node = url;
            return true;
          } catch (e) {
            if (!unreachable.includes(url)) unreachable.push(url);
            if (unreachable.length > 8) unreachable.shift();
            return false;
          }
        };
        if (await attempt(lost, this.token, quick ? QUICK_ATTEMPT_MS : JOIN_ATTEMPT_MS)) break;
        quick = false;
        if (r && r.rejoin_url) {
          const answer = await this.askRejoin(r.rejoin_url, { region: r.region, unreachable });
          if (answer && (await attempt(answer.url, answer.token))) break;
        }
        let done = false;
        for (const url of (r && r.fallback_urls) || []) {
          if (await attempt(url, this.token)) { done = true; break; }
        }
        if (done) break;
        this.setState('reconnecting', `retrying in ${(delay / 1000).toFixed(1)} s`);
        await new Promise((res) => setTimeout(res, delay));
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
      record.ended = Math.round(performance.now());
    } catch (e) {
      this.fail('reconnect', e);
      this.setState('disconnected', String(e.message || e));
    } finally {
      this.recovering = false;
    }
  }

  // Asks the operator's rejoin API where to go; null when it cannot say.
  async askRejoin(url, body) {
    try {
      const r = await fetch(url, {
        method: 'POST',
        headers: { authorization: 'Bearer ' + this.token, 'content-type': 'application/json' },
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
}
