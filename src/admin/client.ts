// The admin command's end of the protocol: typed calls over the broker's Unix socket, and the two ways one
// can fail that the command tells apart (no broker answers; the broker refused).
import type { ClientsAnswer, DeleteClientAnswer, DrainProgress, ErrorAnswer, RevokeAnswer, RevokeTarget, SessionsAnswer } from "./protocol.ts";
import { ADMIN_ROUTES } from "./protocol.ts";

/** Nothing answers on the socket: the broker is not running, or runs with another BROKER_DATA_DIR. */
export class BrokerNotRunningError extends Error {}

/** The broker answered with a refusal: 404 (nothing matched), 400 (not the protocol), 500. */
export class AdminRefusedError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export class AdminClient {
  constructor(private readonly socketPath: string) {}

  sessions(user?: string): Promise<SessionsAnswer> {
    const query = user === undefined ? "" : `?${new URLSearchParams({ user })}`;
    return this.json(`${ADMIN_ROUTES.sessions}${query}`);
  }

  revoke(target: RevokeTarget): Promise<RevokeAnswer> {
    return this.json(ADMIN_ROUTES.revoke, { method: "POST", body: JSON.stringify(target), headers: { "Content-Type": "application/json" } });
  }

  clients(): Promise<ClientsAnswer> {
    return this.json(ADMIN_ROUTES.clients);
  }

  deleteClient(clientId: string): Promise<DeleteClientAnswer> {
    return this.json(`${ADMIN_ROUTES.clients}/${encodeURIComponent(clientId)}`, { method: "DELETE" });
  }

  /** The drain's progress as the broker sends it; leaving the loop early hangs up (the broker keeps draining). */
  async *drain(signal?: AbortSignal): AsyncGenerator<DrainProgress> {
    const response = await this.send(ADMIN_ROUTES.drain, { method: "POST", signal });
    const lines = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    try {
      for (;;) {
        const { value, done } = await lines.read();
        if (done) return;
        buffered += value;
        let end: number;
        while ((end = buffered.indexOf("\n")) >= 0) {
          yield JSON.parse(buffered.slice(0, end)) as DrainProgress;
          buffered = buffered.slice(end + 1);
        }
      }
    } finally {
      await lines.cancel().catch(() => {});
    }
  }

  private async json<T>(path: string, init: RequestInit = {}): Promise<T> {
    return (await (await this.send(path, init)).json()) as T;
  }

  private async send(path: string, init: RequestInit): Promise<Response> {
    let response: Response;
    try {
      response = await fetch(`http://broker${path}`, { ...init, unix: this.socketPath });
    } catch (error) {
      if (init.signal?.aborted) throw error;
      throw new BrokerNotRunningError(`no broker answers on ${this.socketPath} (${error instanceof Error ? error.message : String(error)})`);
    }
    if (!response.ok) {
      const answer = (await response.json().catch(() => ({ error: response.statusText }))) as ErrorAnswer;
      throw new AdminRefusedError(response.status, answer.error);
    }
    return response;
  }
}
