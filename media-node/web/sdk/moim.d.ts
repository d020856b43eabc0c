// Type declarations for the moim client library (moim.js). The wire names (snake_case fields
// of ParticipantInfo and TrackInfo) are the signalling protocol's, documented in the README.

export declare const VERSION: string;

/** A participant as the node describes it. */
export interface ParticipantInfo {
  id: string;
  identity: string;
  name: string;
  hand_raised?: boolean;
}

export type TrackSource = 'camera' | 'microphone' | 'screen' | 'screen_audio';

/** A published track as the node describes it. */
export interface TrackInfo {
  track_id: string;
  participant_id: string;
  kind: 'audio' | 'video';
  source: TrackSource;
  /** Simulcast layers the publisher sends (1 without simulcast). */
  layers: number;
  muted?: boolean;
}

export interface RoomOptions {
  /** The node's http(s) origin; default: the page's. */
  url?: string;
  /** TURN servers (the join API's `iceServers`). */
  iceServers?: RTCIceServer[];
  /** Send all media through TURN. */
  relayOnly?: boolean;
  /** Publish the camera in three simulcast layers (default true). */
  simulcast?: boolean;
}

export type RoomState = 'disconnected' | 'connecting' | 'connected' | 'reconnecting' | 'left';
export type Quality = 'excellent' | 'good' | 'poor' | 'lost';

export interface ConnectionQuality {
  quality: Quality;
  rttMs: number | null;
  lossPct: number | null;
}

export interface ChatEntry {
  from: string;
  name: string;
  text: string;
  tsMs: number;
}

export interface Recovery {
  reason: string;
  /** ms since page load */
  started: number;
  ended: number | null;
  node: string | null;
  attempts: number;
}

/** The `detail` of each event a Room dispatches. */
export interface RoomEvents {
  state: { state: RoomState; reason: string | null };
  joined: { participantId: string; room: string; participants: ParticipantInfo[]; tracks: TrackInfo[]; canPublish: boolean; canChat: boolean };
  participantjoined: ParticipantInfo;
  participantleft: { participantIds: string[] };
  trackpublished: TrackInfo;
  trackunpublished: { trackIds: string[] };
  trackmuted: { trackId: string; participantId: string; muted: boolean };
  /** A remote track arrived on the subscribe connection (`participantId` is its publisher). */
  track: { track: MediaStreamTrack; participantId: string; info: TrackInfo | null; source: TrackSource };
  activespeakers: { participantIds: string[] };
  hand: { participantId: string; raised: boolean };
  chat: ChatEntry;
  quality: ConnectionQuality;
  mediastate: { connection: 'publish' | 'subscribe'; state: RTCPeerConnectionState };
  /** Our camera/mic stream or screen share changed (stream null: the share stopped). */
  localtrack: { stream: MediaStream | null; source: 'camera' | 'screen'; kind?: 'videoinput' | 'audioinput' };
  localmuted: { kind: 'audio' | 'video'; muted: boolean };
  draining: { url: string | null };
  moved: { url: string };
  /** The session was torn down for a rejoin: drop what was shown of the room. */
  reset: Record<string, never>;
  error: { code: string; message: string };
}

export interface DeviceInfo {
  deviceId: string;
  label: string;
  kind: MediaDeviceKind;
}

/** The WebSocket signalling URL of a node, from its http(s) origin. */
export declare function signallingUrl(base: string): string;
/** Cameras, microphones and speakers (labels need a granted permission). */
export declare function listDevices(): Promise<{ videoinput: DeviceInfo[]; audioinput: DeviceInfo[]; audiooutput: DeviceInfo[] }>;
/** Connection quality from loss (%) and round-trip time (ms). */
export declare function rateQuality(lossPct: number, rttMs: number, connected: boolean): Quality;

export declare class Room extends EventTarget {
  constructor(options?: RoomOptions);

  readonly options: RoomOptions;
  readonly participantId: string | null;
  readonly roomName: string | null;
  /** Everyone else in the room, by participant id. */
  readonly participants: Map<string, ParticipantInfo>;
  /** Everyone else's published tracks, by node track id (= the received MediaStreamTrack's id). */
  readonly tracks: Map<string, TrackInfo>;
  readonly speakers: string[];
  readonly hands: Set<string>;
  readonly handRaised: boolean;
  readonly chatLog: ChatEntry[];
  readonly errors: { code: string; message: string }[];
  readonly state: RoomState;
  readonly canPublish: boolean;
  readonly canChat: boolean;
  readonly quality: ConnectionQuality;
  readonly localStream: MediaStream | null;
  readonly screenStream: MediaStream | null;
  /** The publish and subscribe peer connections (null when not connected). */
  readonly pub: RTCPeerConnection | null;
  readonly sub: RTCPeerConnection | null;
  /** The node now in use after a move or rejoin (null: the one connected to first). */
  readonly node: string | null;
  readonly recoveries: Recovery[];
  readonly iceRestarts: number;
  /** ms since page load at each step of the first join. */
  readonly marks: Record<string, number>;
  /** Dynacast: the highest layer the node wants of each published track (null: none). */
  readonly publishedLayers: Record<string, number | null>;

  /** Listens to an event's detail; returns a function that stops listening. */
  on<K extends keyof RoomEvents>(type: K, fn: (detail: RoomEvents[K], event: CustomEvent<RoomEvents[K]>) => void): () => void;

  /** Joins with a join token; resolves once the node says `joined`. */
  connect(token: string, opts?: { url?: string }): Promise<void>;
  /** Leaves: closes both connections and stops camera, microphone and screen. */
  leave(): void;
  /** leave(), and stops the Room's timers and observers. */
  close(): void;

  /** Publishes camera and microphone; `false` leaves one out, a string picks a device id. */
  publishCamera(opts?: { audio?: boolean | string; video?: boolean | string }): Promise<MediaStream>;
  /** Shares a screen or window (ending it in the browser unpublishes it). */
  publishScreen(): Promise<MediaStream>;
  stopScreen(): Promise<void>;
  /** Mutes (sends silence or black, no renegotiation) and tells everyone. */
  setMuted(kind: 'audio' | 'video', muted: boolean): boolean;
  toggleMute(kind: 'audio' | 'video'): boolean;
  isMuted(kind: 'audio' | 'video'): boolean;
  localTrack(kind: 'audio' | 'video'): MediaStreamTrack | null;
  /** Switches camera or microphone while publishing, without renegotiation. */
  switchDevice(kind: 'videoinput' | 'audioinput', deviceId: string): Promise<MediaStreamTrack>;
  raiseHand(raised?: boolean): void;
  sendChat(text: string): void;

  /** Asks for at most width×height device pixels of a received video; 0×0 pauses it at the node. */
  setVideoSize(trackId: string, width: number, height: number): void;
  /**
   * Sizes the received video shown in `element` (a <video>, or an element holding one) from
   * what is on screen, from now on; hidden or scrolled out of view pauses it. Sets
   * `data-visible` on the element. Returns a function that stops watching.
   */
  watch(element: HTMLElement): () => void;
  /** Re-reads a watched element's size and visibility (after showing or hiding it). */
  updateSize(element: HTMLElement): void;
  /** Last-N: video only from the n most recent speakers plus pinned participant ids; null: all. */
  setLastN(n: number | null, pinned?: string[]): void;
  /** Frames decoded per received video track. */
  videoStats(): Promise<Record<string, { framesDecoded: number; frameHeight: number; freezeCount: number }>>;
}
