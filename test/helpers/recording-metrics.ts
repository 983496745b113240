// A metrics collaborator for unit tests that writes down each child start, exit and eviction it is told of,
// in order, as `start:ok`, `exit:idle`, `evicted:user`; everything else it ignores.
import { noMetrics, type BrokerMetrics } from "../../src/observability/metrics.ts";

export function recordingMetrics(): { metrics: BrokerMetrics; recorded: string[] } {
  const recorded: string[] = [];
  const metrics: BrokerMetrics = {
    ...noMetrics,
    childStarting: () => (result) => void recorded.push(`start:${result}`),
    childExited: (reason) => void recorded.push(`exit:${reason}`),
    sessionEvicted: (cap) => void recorded.push(`evicted:${cap}`),
  };
  return { metrics, recorded };
}
