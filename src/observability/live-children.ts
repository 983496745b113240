// The child processes the broker has started and that have not exited yet, for the children gauge and
// the RSS sampled at scrape time; and child starts seen as spans of the request that caused them.
import type { SpawnChild } from "../supervisor/child.ts";
import type { BrokerMetrics } from "./metrics.ts";
import type { Tracing } from "./tracing.ts";

export class LiveChildren {
  private readonly live = new Set<number>();

  /** `spawn`, with each child it starts counted until its process has exited. */
  track(spawn: SpawnChild): SpawnChild {
    return (spec) => {
      const child = spawn(spec);
      this.live.add(child.pid);
      void child.exited.then(() => this.live.delete(child.pid));
      return child;
    };
  }

  pids(): Iterable<number> {
    return this.live;
  }
}

/** `metrics` whose child starts are also spans ("child start") under the request that started them. */
export function childStartSpans(metrics: BrokerMetrics, tracing: Tracing): BrokerMetrics {
  if (!tracing.enabled) return metrics;
  return Object.assign(Object.create(metrics) as BrokerMetrics, {
    childStarting: () => {
      const recorded = metrics.childStarting();
      const span = tracing.start("child start");
      return (result: "ok" | "failed") => {
        recorded(result);
        span.end({ "fmb.child.start_result": result });
      };
    },
  });
}
