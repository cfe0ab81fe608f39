/**
 * Latency as the user hears it: from the end of the user's speech to the first sample of the
 * reply actually played, on the client's own clock (`performance.now()`), per turn. The
 * server's `turn_end.metrics` stop at "first audio sent"; this adds the network, the jitter
 * buffer and the output device, which is what the user waits through.
 *
 * The end of speech is, best first:
 * - "local": the last 20 ms mic frame above the speech threshold before the server's
 *   `speech_stopped` arrived (needs built-in capture, which measures levels);
 * - "server_vad": `speech_stopped.t_ms` (input-audio time) mapped onto the client clock from
 *   when capture started (includes the VAD's speech padding, ~200 ms late);
 * - "audio_end" / "text": when the client sent `audio_end` or a `text` turn.
 *
 * One `latency` event per reply turn, once both its `turn_end` and its first played sample
 * are known (or at `turn_end` when nothing will be played: interrupted first, no audio, or no
 * player reporting).
 */

import type { TurnMetrics } from "./protocol.generated.js";

export type EndOfSpeechSource = "local" | "server_vad" | "audio_end" | "text";

export interface LatencyEvent extends TurnMetrics {
  turnId: number;
  /** End of user speech to the first reply sample played, ms; null when not measurable. */
  voiceToEarMs: number | null;
  endOfSpeech: EndOfSpeechSource | null;
  /** End of user speech to the first reply audio frame received, ms. */
  voiceToFirstAudioMs: number | null;
  /** First audio frame received to its first sample played (jitter buffer, output), ms. */
  receivedToPlayedMs: number | null;
  reason: string;
  /** Client-clock (performance.now()) marks of the turn, for timelines. */
  marks: TurnMarks;
}

export interface TurnMarks {
  speechStarted?: number;
  endOfSpeech?: number;
  speechStopped?: number;
  transcriptFinal?: number;
  firstToken?: number;
  firstAudio?: number;
  firstPlayed?: number;
  playbackEnded?: number;
  turnEnd?: number;
}

interface TurnTrack {
  marks: TurnMarks;
  endSource: EndOfSpeechSource | null;
  metrics: TurnMetrics | null;
  reason: string;
  audio: boolean;
  interrupted: boolean;
  emitted: boolean;
}

const LOCAL_WINDOW_MS = 3000;
const MAX_TURNS = 32;

export class LatencyTracker {
  /** Mic level (dBFS) above which a frame counts as speech for "local" end of speech. */
  speechDb = -50;
  #turns = new Map<number, TurnTrack>();
  #lastVoicedAt: number | null = null;
  #userSpeechStartedAt: number | null = null;
  #captureOrigin: number | null = null;
  #pendingEnd: { at: number; source: EndOfSpeechSource; speechStopped?: number } | null = null;
  /** Whether a player reports first samples (else events go out at turn_end). */
  reportsPlayback = false;

  constructor(
    private readonly emit: (event: LatencyEvent) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Capture started: input-audio time 0 is about now. */
  captureStarted(at = this.now()): void {
    this.#captureOrigin = at;
  }

  level(db: number, at = this.now()): void {
    if (db >= this.speechDb) this.#lastVoicedAt = at;
  }

  speechStarted(at = this.now()): void {
    this.#userSpeechStartedAt = at;
  }

  speechStopped(tMs: number, at = this.now()): void {
    let end: { at: number; source: EndOfSpeechSource };
    const voiced = this.#lastVoicedAt;
    if (voiced !== null && at - voiced <= LOCAL_WINDOW_MS && voiced <= at) {
      end = { at: voiced, source: "local" };
    } else if (this.#captureOrigin !== null && this.#captureOrigin + tMs <= at) {
      end = { at: this.#captureOrigin + tMs, source: "server_vad" };
    } else end = { at, source: "server_vad" };
    this.#pendingEnd = { ...end, speechStopped: at };
  }

  userTurnSent(source: "audio_end" | "text", at = this.now()): void {
    this.#pendingEnd = { at, source };
  }

  transcriptFinal(turnId: number, at = this.now()): void {
    this.#bind(turnId).marks.transcriptFinal ??= at;
  }

  token(turnId: number, at = this.now()): void {
    this.#bind(turnId).marks.firstToken ??= at;
  }

  audio(turnId: number, at = this.now()): void {
    const turn = this.#bind(turnId);
    turn.audio = true;
    turn.marks.firstAudio ??= at;
  }

  played(turnId: number, heardAt: number): void {
    const turn = this.#turns.get(turnId);
    if (!turn || turn.marks.firstPlayed !== undefined) return;
    turn.marks.firstPlayed = heardAt;
    this.#maybeEmit(turnId, turn);
  }

  playbackEnded(turnId: number, at = this.now()): void {
    const turn = this.#turns.get(turnId);
    if (turn) turn.marks.playbackEnded ??= at;
  }

  interrupted(turnId: number, at = this.now()): void {
    const turn = this.#turns.get(turnId);
    if (!turn) return;
    turn.interrupted = true;
    turn.marks.playbackEnded ??= at;
    this.#maybeEmit(turnId, turn);
  }

  turnEnd(turnId: number, reason: string, metrics: TurnMetrics, at = this.now()): void {
    const turn = this.#bind(turnId);
    turn.marks.turnEnd = at;
    turn.metrics = metrics;
    turn.reason = reason;
    this.#maybeEmit(turnId, turn);
  }

  reset(): void {
    this.#turns.clear();
    this.#pendingEnd = null;
    this.#lastVoicedAt = null;
    this.#captureOrigin = null;
  }

  /** The turn's record; the pending end of speech goes to the first turn that shows up. */
  #bind(turnId: number): TurnTrack {
    let turn = this.#turns.get(turnId);
    if (!turn) {
      turn = {
        marks: {},
        endSource: null,
        metrics: null,
        reason: "",
        audio: false,
        interrupted: false,
        emitted: false,
      };
      this.#turns.set(turnId, turn);
      if (this.#turns.size > MAX_TURNS)
        this.#turns.delete(this.#turns.keys().next().value as number);
    }
    if (this.#pendingEnd && turn.endSource === null && !turn.audio) {
      turn.marks.endOfSpeech = this.#pendingEnd.at;
      if (this.#pendingEnd.speechStopped !== undefined) {
        turn.marks.speechStopped = this.#pendingEnd.speechStopped;
      }
      if (this.#userSpeechStartedAt !== null && this.#userSpeechStartedAt <= this.#pendingEnd.at) {
        turn.marks.speechStarted = this.#userSpeechStartedAt;
      }
      turn.endSource = this.#pendingEnd.source;
      this.#pendingEnd = null;
    }
    return turn;
  }

  #maybeEmit(turnId: number, turn: TurnTrack): void {
    if (turn.emitted || turn.metrics === null) return;
    const waitForSound =
      turn.audio &&
      !turn.interrupted &&
      this.reportsPlayback &&
      turn.marks.firstPlayed === undefined;
    if (waitForSound) return;
    turn.emitted = true;
    const { marks } = turn;
    const since = (from?: number, to?: number) =>
      from === undefined || to === undefined ? null : Math.round(to - from);
    this.emit({
      ...turn.metrics,
      turnId,
      voiceToEarMs: since(marks.endOfSpeech, marks.firstPlayed),
      endOfSpeech: turn.endSource,
      voiceToFirstAudioMs: since(marks.endOfSpeech, marks.firstAudio),
      receivedToPlayedMs: since(marks.firstAudio, marks.firstPlayed),
      reason: turn.reason,
      marks: { ...marks },
    });
  }
}
