/**
 * The send queue in front of the socket. A browser WebSocket never refuses `send()`: on a slow
 * link it buffers without bound (`bufferedAmount`) and the audio the server gets falls further
 * and further behind. So before each send the queue looks at `bufferedAmount`: at or below the
 * high-water mark the frame goes out at once; above it, frames wait here, in a queue bounded in
 * bytes (a few seconds of audio). When the queue is full the OLDEST audio is dropped (stale
 * speech is worth least) and a warning with the counts is reported, at most once per
 * `warningIntervalMs` plus once when the queue drains. While frames wait, a timer polls
 * `bufferedAmount` every `pollIntervalMs` (the WebSocket API has no "drained" event); with
 * nothing waiting, no timer runs.
 *
 * Control frames (`audio_end`, `text`) may be queued as non-droppable so they keep their order
 * behind the audio; they are never dropped and do not count toward the bound. So is the first
 * chunk of a container stream (WebM, Ogg, MP4 from MediaRecorder), which holds the header.
 *
 * Drops are whole chunks, never a piece of one. For pcm16 that is a gap in the audio. For a
 * container it is a gap in the byte stream: Chromium's chunks join up again (its WebM chunks end
 * one byte into a SimpleBlock, the ID, and the next begins with the rest of one; its MP4 chunks
 * are whole moof+mdat fragments), and the gateway's demuxers resume at the next Cluster, Ogg
 * page or moof where another recorder cut elsewhere. What was dropped is lost; the rest decodes.
 */

/** What the queue needs of a socket (a browser WebSocket, the `ws` package's, or a fake). */
export interface BufferedSocket {
  readonly bufferedAmount: number;
  readonly readyState: number;
  send(data: OutgoingData): void;
}

export type AudioData = ArrayBuffer | ArrayBufferView | Blob;
export type OutgoingData = string | AudioData;

export interface BackpressureOptions {
  /** Hold frames while `bufferedAmount` is above this many bytes. Default 64 KiB. */
  highWaterMark?: number;
  /** At most this many bytes of audio wait; then the oldest is dropped. Default 96 000
   * (3 s of 16 kHz pcm16; the client sizes it from its input format when not given). */
  maxQueuedBytes?: number;
  /** How often to look at `bufferedAmount` while frames wait. Default 20 ms. */
  pollIntervalMs?: number;
  /** At most one drop warning per this many ms (one more when the queue drains). Default 1000. */
  warningIntervalMs?: number;
}

export interface DropReport {
  /** Since the previous report. */
  droppedChunks: number;
  droppedBytes: number;
  /** Since the queue was made. */
  totalDroppedChunks: number;
  totalDroppedBytes: number;
}

export const DEFAULT_HIGH_WATER_MARK = 64 * 1024;
export const DEFAULT_MAX_QUEUED_BYTES = 96_000;
const OPEN = 1;

interface Item {
  data: OutgoingData;
  bytes: number;
  droppable: boolean;
}

export function byteLengthOf(data: OutgoingData): number {
  if (typeof data === "string") return data.length;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return data.byteLength;
  return data.size;
}

export class SendQueue {
  readonly highWaterMark: number;
  readonly maxQueuedBytes: number;
  readonly pollIntervalMs: number;
  readonly warningIntervalMs: number;

  #socket: BufferedSocket;
  #onDrop: (report: DropReport) => void;
  #items: Item[] = [];
  #queuedBytes = 0; // droppable bytes waiting
  #timer: ReturnType<typeof setTimeout> | null = null;
  #pendingChunks = 0;
  #pendingBytes = 0;
  #totalChunks = 0;
  #totalBytes = 0;
  #lastReportAt = Number.NEGATIVE_INFINITY;
  #closed = false;

  constructor(
    socket: BufferedSocket,
    options: BackpressureOptions = {},
    onDrop: (report: DropReport) => void = () => {},
  ) {
    this.#socket = socket;
    this.#onDrop = onDrop;
    this.highWaterMark = options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
    this.maxQueuedBytes = options.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
    this.pollIntervalMs = options.pollIntervalMs ?? 20;
    this.warningIntervalMs = options.warningIntervalMs ?? 1000;
    for (const [name, value] of Object.entries({
      highWaterMark: this.highWaterMark,
      maxQueuedBytes: this.maxQueuedBytes,
      pollIntervalMs: this.pollIntervalMs,
      warningIntervalMs: this.warningIntervalMs,
    })) {
      if (!(value >= 0) || !Number.isFinite(value)) {
        throw new RangeError(`backpressure ${name} must be a finite number >= 0, got ${value}`);
      }
    }
  }

  /** Frames waiting (audio and control). */
  get queuedChunks(): number {
    return this.#items.length;
  }

  /** Bytes of audio waiting (what the bound applies to). */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** True while frames wait for the socket to drain. */
  get holding(): boolean {
    return this.#items.length > 0;
  }

  get totalDroppedChunks(): number {
    return this.#totalChunks;
  }

  get totalDroppedBytes(): number {
    return this.#totalBytes;
  }

  /**
   * Send `data` now, or queue it behind what waits. Returns false when it was not accepted
   * (the socket is not open, or the queue was closed). Audio is `droppable`; a control frame
   * that must keep its place is not. Do not reuse a buffer after passing it here.
   */
  send(data: OutgoingData, droppable = true): boolean {
    if (this.#closed || this.#socket.readyState !== OPEN) return false;
    if (this.#items.length === 0 && this.#socket.bufferedAmount <= this.highWaterMark) {
      this.#socket.send(data);
      return true;
    }
    const bytes = byteLengthOf(data);
    this.#items.push({ data, bytes, droppable });
    if (droppable) {
      this.#queuedBytes += bytes;
      this.#trim();
    }
    if (this.#socket.bufferedAmount <= this.highWaterMark) this.flush();
    else this.#arm();
    return true;
  }

  /** Send what the socket can take now; called by the timer, callable by hand. */
  flush(): void {
    if (this.#closed) return;
    if (this.#socket.readyState !== OPEN) {
      this.clear();
      return;
    }
    while (this.#items.length > 0 && this.#socket.bufferedAmount <= this.highWaterMark) {
      const item = this.#items.shift() as Item;
      if (item.droppable) this.#queuedBytes -= item.bytes;
      this.#socket.send(item.data);
    }
    if (this.#items.length === 0) {
      this.#disarm();
      this.#report(true);
    } else {
      this.#report(false);
      this.#arm();
    }
  }

  /** Drop everything waiting, without a warning (e.g. on stop); returns how many frames. */
  clear(): number {
    const count = this.#items.length;
    this.#items = [];
    this.#queuedBytes = 0;
    this.#disarm();
    return count;
  }

  /** Clear and refuse further frames; stops the timer. */
  close(): void {
    this.clear();
    this.#closed = true;
  }

  #trim(): void {
    let index = 0;
    while (this.#queuedBytes > this.maxQueuedBytes && index < this.#items.length) {
      const item = this.#items[index] as Item;
      if (!item.droppable) {
        index += 1;
        continue;
      }
      this.#items.splice(index, 1);
      this.#queuedBytes -= item.bytes;
      this.#pendingChunks += 1;
      this.#pendingBytes += item.bytes;
      this.#totalChunks += 1;
      this.#totalBytes += item.bytes;
    }
    this.#report(false);
  }

  #report(drained: boolean): void {
    if (this.#pendingChunks === 0) return;
    const now = Date.now();
    if (!drained && now - this.#lastReportAt < this.warningIntervalMs) return;
    this.#lastReportAt = now;
    const report: DropReport = {
      droppedChunks: this.#pendingChunks,
      droppedBytes: this.#pendingBytes,
      totalDroppedChunks: this.#totalChunks,
      totalDroppedBytes: this.#totalBytes,
    };
    this.#pendingChunks = 0;
    this.#pendingBytes = 0;
    this.#onDrop(report);
  }

  #arm(): void {
    if (this.#timer !== null) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.flush(); // re-arms while frames still wait
    }, this.pollIntervalMs);
  }

  #disarm(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
