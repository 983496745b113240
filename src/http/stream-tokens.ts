// Which access token opened each open /mcp stream, so the stream ends when that token does: at its
// expiry, and at a revocation of its grant that the token does not outlive.
import type { TimerHandle, Timers } from "../supervisor/timers.ts";

/** The token a stream was opened with: its grant, its hash (never the token), its expiry. */
export interface StreamToken {
  grantId: string;
  tokenHash: string;
  expiresAt: number;
}

export interface StreamTokensDeps {
  timers: Timers;
  /** Whether the token is still live (not revoked, not expired, its grant not revoked). */
  isLive(tokenHash: string): Promise<boolean>;
}

interface Watched {
  token: StreamToken;
  end(reason: string): void;
  timer: TimerHandle;
}

export class StreamTokens {
  private readonly byGrant = new Map<string, Set<Watched>>();

  constructor(private readonly deps: StreamTokensDeps) {}

  /** Calls `end` once `token` expires or is revoked; the function returned stops watching (call it when the stream ends). */
  watch(token: StreamToken, end: (reason: string) => void): () => void {
    const untilExpiry = Math.max(0, token.expiresAt - this.deps.timers.now());
    const watched: Watched = {
      token,
      end,
      timer: this.deps.timers.setTimeout(() => this.finish(watched, "the access token that opened this stream expired"), untilExpiry),
    };
    let streams = this.byGrant.get(token.grantId);
    if (streams === undefined) this.byGrant.set(token.grantId, (streams = new Set()));
    streams.add(watched);
    return () => this.forget(watched);
  }

  /** A token of the grant was revoked: the streams opened with a token that is no longer live end; the others go on. */
  async grantRevoked(grantId: string): Promise<void> {
    for (const watched of [...(this.byGrant.get(grantId) ?? [])]) {
      if (!(await this.deps.isLive(watched.token.tokenHash))) this.finish(watched, "the access token that opened this stream was revoked");
    }
  }

  private finish(watched: Watched, reason: string): void {
    if (!this.forget(watched)) return;
    watched.end(reason);
  }

  private forget(watched: Watched): boolean {
    const streams = this.byGrant.get(watched.token.grantId);
    if (streams === undefined || !streams.delete(watched)) return false;
    if (streams.size === 0) this.byGrant.delete(watched.token.grantId);
    this.deps.timers.clearTimeout(watched.timer);
    return true;
  }
}
