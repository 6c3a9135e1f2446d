/**
 * A small typed event emitter with no dependencies, so the package runs unchanged in browsers
 * and on Node. A listener that throws does not break the SDK: the error is rethrown in a
 * microtask, where the platform reports it as any uncaught error.
 */
export class Emitter<Events extends { [K in keyof Events]: (...args: never[]) => void }> {
  private listeners: { [K in keyof Events]?: Events[K][] } = {};

  /** Adds a listener; returns a function that removes it again. */
  on<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    const list = this.listeners[event] ?? (this.listeners[event] = []);
    list.push(listener);
    return () => this.off(event, listener);
  }

  /** Adds a listener that is removed after its first call. */
  once<K extends keyof Events>(event: K, listener: Events[K]): () => void {
    const wrapper = ((...args: Parameters<Events[K]>) => {
      this.off(event, wrapper);
      (listener as (...a: Parameters<Events[K]>) => void)(...args);
    }) as Events[K];
    return this.on(event, wrapper);
  }

  off<K extends keyof Events>(event: K, listener: Events[K]): void {
    const list = this.listeners[event];
    if (!list) return;
    const i = list.indexOf(listener);
    if (i >= 0) list.splice(i, 1);
  }

  protected emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const list = this.listeners[event];
    if (!list || list.length === 0) return;
    // One listener (the common case) is called without copying the list.
    if (list.length === 1) {
      callListener(list[0] as (...a: Parameters<Events[K]>) => void, args);
      return;
    }
    for (const listener of list.slice()) {
      callListener(listener as (...a: Parameters<Events[K]>) => void, args);
    }
  }
}

function callListener<A extends unknown[]>(listener: (...a: A) => void, args: A): void {
  try {
    listener(...args);
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
}
