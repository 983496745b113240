// Latency samples kept in a preallocated Float64Array and summarised with exact percentiles,
// so recording a sample costs one store and the figures are real samples, not interpolations.

export interface LatencySummary {
  count: number;
  min: number | null;
  mean: number | null;
  p50: number | null;
  p99: number | null;
  p999: number | null;
  max: number | null;
}

/**
 * Nearest-rank percentile of ascending samples: the smallest sample with at least p% of the
 * samples at or below it. Exact (always a measured value); NaN when there are no samples.
 */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  // The epsilon keeps float noise (0.999 × 1000 = 999.0000000000001) from skipping a rank.
  const rank = Math.ceil((p / 100) * n - 1e-9);
  return sorted[Math.min(n, Math.max(1, rank)) - 1]!;
}

export class LatencyRecorder {
  private readonly samples: Float64Array;
  private used = 0;

  constructor(capacity: number) {
    this.samples = new Float64Array(capacity);
  }

  get count(): number {
    return this.used;
  }

  record(ms: number): void {
    this.samples[this.used++] = ms;
  }

  /** Sorts a copy, so a summary taken mid-run (Ctrl-C) leaves the recording intact. */
  summary(): LatencySummary {
    const n = this.used;
    if (n === 0) return { count: 0, min: null, mean: null, p50: null, p99: null, p999: null, max: null };
    const sorted = this.samples.slice(0, n).sort();
    let sum = 0;
    for (let i = 0; i < n; i++) sum += sorted[i]!;
    return {
      count: n,
      min: sorted[0]!,
      mean: sum / n,
      p50: percentile(sorted, 50),
      p99: percentile(sorted, 99),
      p999: percentile(sorted, 99.9),
      max: sorted[n - 1]!,
    };
  }
}
