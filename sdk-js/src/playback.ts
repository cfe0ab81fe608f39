/**
 * Where the assistant's audio goes: `playback` chooses the AudioSink (src/types.ts). `"auto"`
 * is the built-in Web Audio queue (`WebAudioPlayer`, src/player.ts); `"none"` means the
 * application handles the `audio` events (and reports its position with
 * `client.reportPlayback()`); an application may also pass its own AudioSink.
 */

import { type PlayerOptions, WebAudioPlayer } from "./player.js";
import type { AudioSink } from "./types.js";

export type PlaybackOption = "auto" | "none" | AudioSink;

export function resolvePlayback(
  option: PlaybackOption | undefined,
  player: PlayerOptions = {},
): AudioSink | null {
  if (option === undefined || option === "none") return null;
  if (option === "auto") {
    if (player.context === undefined && typeof AudioContext !== "function") {
      throw new TypeError('playback "auto" needs Web Audio (AudioContext): use "none" here');
    }
    return new WebAudioPlayer(player);
  }
  if (typeof option === "object" && typeof option.write === "function") return option;
  throw new TypeError(`unsupported playback option: ${String(option)}`);
}
