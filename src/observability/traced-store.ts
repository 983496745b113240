// The store seen through a span per call ("store <method>"), for brokers that trace; its arguments (token
// hashes, rows) are never recorded. Without tracing the broker keeps the plain store: no proxy on the hot path.
import type { Store } from "../store/store.ts";
import type { Tracing } from "./tracing.ts";

/** Calls that are no query: subscribing to revocations, closing, and the health probe's ping each /healthz. */
const UNTRACED = new Set<PropertyKey>(["onRevocation", "close", "constructor"]);

export function tracedStore(store: Store, tracing: Tracing): Store {
  const wrapped = new Map<PropertyKey, unknown>();
  return new Proxy(store, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key, target);
      if (typeof value !== "function" || UNTRACED.has(key)) return value;
      let traced = wrapped.get(key);
      if (traced === undefined) {
        const name = `store ${String(key)}`;
        const method = value as (...args: unknown[]) => unknown;
        traced = (...args: unknown[]) => tracing.inSpan(name, { "db.system.name": "sqlite", "db.operation.name": String(key) }, () => method.apply(target, args));
        wrapped.set(key, traced);
      }
      return traced;
    },
  });
}
