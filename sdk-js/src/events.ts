/**
 * A small typed event emitter: `Events` maps each event name to its payload type, so
 * `on("llm_token", (m) => m.text)` is checked by the compiler (the shape of livekit's
 * TypedEmitter, without a dependency). Handlers run synchronously in the order they were
 * added. A handler that throws does not stop the others nor the emitter's caller (the socket
 * loop): it goes to `onHandlerError`, by default rethrown on a fresh task, where the host reports
 * it as uncaught (the way a throwing DOM event listener is reported).
 */

export type Handler<T> = (payload: T) => void;

export interface EmitterOptions {
  /** Where an error thrown by a handler goes; by default it is rethrown on a fresh task. */
  onHandlerError?: (error: unknown, event: PropertyKey) => void;
}

function rethrowLater(error: unknown): void {
  setTimeout(() => {
    throw error;
  }, 0);
}

export class TypedEmitter<Events extends object> {
  #handlers = new Map<keyof Events, Handler<never>[]>();
  #onHandlerError: (error: unknown, event: PropertyKey) => void;

  constructor(options: EmitterOptions = {}) {
    this.#onHandlerError = options.onHandlerError ?? rethrowLater;
  }

  /** Add a handler; returns `this` for chaining. */
  on<E extends keyof Events>(event: E, handler: Handler<Events[E]>): this {
    const list = this.#handlers.get(event);
    if (list) list.push(handler as Handler<never>);
    else this.#handlers.set(event, [handler as Handler<never>]);
    return this;
  }

  /** Add a handler that runs for the next event only. */
  once<E extends keyof Events>(event: E, handler: Handler<Events[E]>): this {
    const wrapper: Handler<Events[E]> = (payload) => {
      this.off(event, wrapper);
      handler(payload);
    };
    return this.on(event, wrapper);
  }

  /** Remove one registration of `handler` (the latest added). */
  off<E extends keyof Events>(event: E, handler: Handler<Events[E]>): this {
    const list = this.#handlers.get(event);
    if (!list) return this;
    const index = list.lastIndexOf(handler as Handler<never>);
    if (index >= 0) list.splice(index, 1);
    if (list.length === 0) this.#handlers.delete(event);
    return this;
  }

  /** Remove every handler of `event`, or of all events. */
  removeAllListeners(event?: keyof Events): this {
    if (event === undefined) this.#handlers.clear();
    else this.#handlers.delete(event);
    return this;
  }

  listenerCount(event: keyof Events): number {
    return this.#handlers.get(event)?.length ?? 0;
  }

  /** Call every handler of `event` with `payload`; returns whether there was any. */
  emit<E extends keyof Events>(event: E, payload: Events[E]): boolean {
    const list = this.#handlers.get(event);
    if (!list || list.length === 0) return false;
    // A snapshot: handlers added or removed by a handler take effect from the next emit.
    for (const handler of [...list]) {
      try {
        (handler as Handler<Events[E]>)(payload);
      } catch (error) {
        this.#onHandlerError(error, event);
      }
    }
    return true;
  }
}
