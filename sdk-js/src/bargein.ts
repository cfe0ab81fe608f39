/**
 * Client-side barge-in behind an echo gate. While the assistant's audio plays, the microphone
 * hears the user AND, unless the browser's echo canceller removes it, the assistant itself
 * (see "Echo" in the README: Chromium's canceller removes it once converged, but a fresh one
 * lets the first second or two of the first reply through, and older builds none of it). A
 * plain energy threshold would then let the assistant interrupt itself. So while playing:
 *
 * - the threshold is raised (`playingThresholdDb`, default -30 dBFS, against -45 when silent);
 * - for the first `graceMs` of a turn's playback the gate only listens: it learns how loud the
 *   echo that reaches the mic is (its peak) and then requires `echoMarginDb` more than that;
 * - a sound above the gated threshold ducks playback at once, and only one that lasts
 *   `minSpeechMs` (with dips shorter than `releaseMs` bridged) interrupts; a shorter one
 *   releases the duck.
 *
 * Pure logic over (level, time) samples, so it is tested with made-up levels; the client
 * feeds it the capture's 20 ms mic levels and the player's playing state.
 */

export interface BargeInOptions {
  /** Mic level (dBFS RMS) that counts as speech while nothing plays. Default -45. */
  thresholdDb?: number;
  /** The least level that counts as speech while the assistant plays. Default -30. */
  playingThresholdDb?: number;
  /** Above the echo level learned during the grace period by at least this. Default 6 dB. */
  echoMarginDb?: number;
  /** Listen-only time at the start of playback (the echo canceller converging). Default 300 ms. */
  graceMs?: number;
  /** Speech this long over the gate interrupts. Default 250 ms. */
  minSpeechMs?: number;
  /** Dips below the gate shorter than this do not end the speech. Default 150 ms. */
  releaseMs?: number;
}

export interface BargeInActions {
  /** Lower (true) or restore (false) the playback volume. */
  duck(on: boolean): void;
  /** The user is talking over the reply: cut it. */
  interrupt(): void;
}

export type GateState = "idle" | "grace" | "armed" | "ducked" | "interrupted";

/** RMS amplitude (0..1) to dBFS; silence is -Infinity. */
export function toDb(rms: number): number {
  return rms > 0 ? 20 * Math.log10(rms) : Number.NEGATIVE_INFINITY;
}

export class EchoGate {
  readonly options: Required<BargeInOptions>;
  #actions: BargeInActions;
  #playing = false;
  #playingSince = 0;
  #echoPeakDb = Number.NEGATIVE_INFINITY;
  #runStart: number | null = null;
  #lastAbove = 0;
  #fired = false;
  #lastAt = 0;

  constructor(options: BargeInOptions, actions: BargeInActions) {
    this.options = {
      thresholdDb: options.thresholdDb ?? -45,
      playingThresholdDb: options.playingThresholdDb ?? -30,
      echoMarginDb: options.echoMarginDb ?? 6,
      graceMs: options.graceMs ?? 300,
      minSpeechMs: options.minSpeechMs ?? 250,
      releaseMs: options.releaseMs ?? 150,
    };
    this.#actions = actions;
  }

  /** The level a sound must reach now to count as the user speaking. */
  get thresholdDb(): number {
    const o = this.options;
    if (!this.#playing) return o.thresholdDb;
    return Math.max(o.playingThresholdDb, this.#echoPeakDb + o.echoMarginDb);
  }

  get state(): GateState {
    if (!this.#playing) return "idle";
    if (this.#fired) return "interrupted";
    if (this.#runStart !== null) return "ducked";
    return this.#lastAt - this.#playingSince < this.options.graceMs ? "grace" : "armed";
  }

  /** The assistant's audio started (true) or stopped (false) playing at `at` ms. */
  setPlaying(playing: boolean, at: number): void {
    if (playing === this.#playing) return;
    if (!playing && this.#runStart !== null && !this.#fired) this.#actions.duck(false);
    this.#playing = playing;
    this.#playingSince = at;
    this.#lastAt = at;
    this.#echoPeakDb = Number.NEGATIVE_INFINITY;
    this.#runStart = null;
    this.#fired = false;
  }

  /** One mic level sample (dBFS) at `at` ms; returns the gate's state after it. */
  push(levelDb: number, at: number): GateState {
    this.#lastAt = at;
    if (!this.#playing || this.#fired) return this.state;
    const o = this.options;
    if (at - this.#playingSince < o.graceMs) {
      this.#echoPeakDb = Math.max(this.#echoPeakDb, levelDb);
      return "grace";
    }
    if (levelDb >= this.thresholdDb) {
      this.#lastAbove = at;
      if (this.#runStart === null) {
        this.#runStart = at;
        this.#actions.duck(true);
      } else if (at - this.#runStart >= o.minSpeechMs) {
        this.#fired = true;
        this.#actions.interrupt();
      }
    } else if (this.#runStart !== null && at - this.#lastAbove >= o.releaseMs) {
      this.#runStart = null;
      this.#actions.duck(false);
    }
    return this.state;
  }
}
