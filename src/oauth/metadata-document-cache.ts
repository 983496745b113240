// Keeps fetched client metadata documents by URL, so one client's many sign-ins cost one fetch: fresh
// for what Cache-Control allows (within bounds), failures briefly, bounded in entries, one fetch per URL at a time.

export type CachedOutcome<T> = { ok: true; value: T; maxAgeMs: number | undefined } | { ok: false; reason: string };

export interface DocumentCacheOptions {
  /** However short the document's Cache-Control (or no-store), it is kept this long: a sign-in fetches it at most once. */
  minTtlMs: number;
  maxTtlMs: number;
  /** How long a failure is remembered, so a URL cannot make the broker fetch in a loop. */
  failureTtlMs: number;
  /** Beyond this many URLs the oldest is forgotten. */
  maxEntries: number;
  /** Fetches under way at once; past it a new URL is refused for now (and that refusal is not remembered). */
  maxInFlight: number;
}

export const DEFAULT_DOCUMENT_CACHE: DocumentCacheOptions = {
  minTtlMs: 60_000,
  maxTtlMs: 24 * 3600_000,
  failureTtlMs: 30_000,
  maxEntries: 1_000,
  maxInFlight: 64,
};

export const TOO_MANY_FETCHES = "could not be fetched now: the broker is fetching too many documents; try again in a moment";

/** A document without Cache-Control is kept this long (within the bounds). */
const DEFAULT_TTL_MS = 3600_000;

export class MetadataDocumentCache<T> {
  private readonly entries = new Map<string, { outcome: CachedOutcome<T>; expiresAt: number }>();
  private readonly inFlight = new Map<string, Promise<CachedOutcome<T>>>();

  constructor(
    private readonly load: (url: string) => Promise<CachedOutcome<T>>,
    private readonly now: () => number,
    private readonly options: DocumentCacheOptions = DEFAULT_DOCUMENT_CACHE,
  ) {}

  /** The document (or the failure) for `url`: from the cache while fresh, otherwise from one shared fetch. */
  get(url: string): Promise<CachedOutcome<T>> {
    const cached = this.entries.get(url);
    if (cached !== undefined && this.now() < cached.expiresAt) return Promise.resolve(cached.outcome);
    const pending = this.inFlight.get(url);
    if (pending !== undefined) return pending;
    if (this.inFlight.size >= this.options.maxInFlight) return Promise.resolve({ ok: false, reason: TOO_MANY_FETCHES });
    const loading = this.load(url)
      .catch((error): CachedOutcome<T> => ({ ok: false, reason: `could not be fetched (${error instanceof Error ? error.message : String(error)})` }))
      .then((outcome) => {
        this.remember(url, outcome);
        return outcome;
      })
      .finally(() => this.inFlight.delete(url));
    this.inFlight.set(url, loading);
    return loading;
  }

  private remember(url: string, outcome: CachedOutcome<T>): void {
    const { minTtlMs, maxTtlMs, failureTtlMs, maxEntries } = this.options;
    const ttl = outcome.ok ? Math.min(maxTtlMs, Math.max(minTtlMs, outcome.maxAgeMs ?? DEFAULT_TTL_MS)) : failureTtlMs;
    this.entries.delete(url);
    this.entries.set(url, { outcome, expiresAt: this.now() + ttl });
    while (this.entries.size > maxEntries) this.entries.delete(this.entries.keys().next().value!);
  }
}
