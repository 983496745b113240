// The running broker's end of the admin command: HTTP on a Unix socket in BROKER_DATA_DIR, mode 0600, that only
// the broker's user can reach. A stale socket a dead broker left is replaced; one a live broker answers on is not taken.
import { DrizzleQueryError } from "drizzle-orm/errors";
import { Elysia, t } from "elysia";
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import type { Logger } from "../log.ts";
import { ADMIN_ROUTES, type DrainProgress, type ErrorAnswer, type RevokeTarget } from "./protocol.ts";
import { AdminNotFoundError, type AdminService } from "./service.ts";

/** The socket cannot be had: another broker serves this data directory, or something else sits at its path. */
export class AdminSocketError extends Error {}

export interface AdminSocket {
  path: string;
  /** Stops answering, ends open drains, and removes the socket file (if it is still this broker's). */
  close(): void;
}

/** sun_path holds 108 bytes with its terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

export async function listenAdminSocket(path: string, service: AdminService, logger: Logger): Promise<AdminSocket> {
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
    throw new AdminSocketError(`BROKER_DATA_DIR is too long for the admin socket ${path}: a Unix socket path has at most ${MAX_SOCKET_PATH_BYTES} bytes`);
  }
  await removeStaleSocket(path);
  let server: ReturnType<typeof Bun.serve> | undefined;
  // A drain's answer stays open, quiet, until the last child has gone: no idle timeout for it.
  const app = adminRoutes(service, logger, (request) => server?.timeout(request, 0));
  // The data directory (0700) already keeps others out; the umask makes the socket itself 0600 from its first moment.
  const umask = process.umask(0o177);
  try {
    server = Bun.serve({ unix: path, fetch: (request) => app.handle(request) });
  } catch (error) {
    throw new AdminSocketError(`cannot listen on the admin socket ${path}: ${error instanceof Error ? error.message : String(error)}`);
  } finally {
    process.umask(umask);
  }
  chmodSync(path, 0o600);
  const ours = lstatSync(path).ino;
  return {
    path,
    close() {
      void server?.stop(true);
      try {
        // A broker started since (after this one stopped answering) may own the path now.
        if (lstatSync(path).ino === ours) unlinkSync(path);
      } catch {
        // Already gone.
      }
    },
  };
}

/** Clears the way for the socket: nothing there, or a socket no one answers on (removed). Throws AdminSocketError. */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return;
  }
  if (!isSocket) throw new AdminSocketError(`${path} exists and is not a socket: move it away, the admin command's socket goes there`);
  if (await answers(path)) throw new AdminSocketError(`another broker is running with this data directory: its admin socket ${path} answers`);
  unlinkSync(path);
}

async function answers(path: string): Promise<boolean> {
  try {
    const socket = await Bun.connect({ unix: path, socket: { data() {} } });
    socket.end();
    return true;
  } catch {
    return false;
  }
}

/** Why a command failed, as the operator reads it: a failed query's own message is its SQL and parameters; its cause says why. */
function failureReason(error: unknown): string {
  if (error instanceof DrizzleQueryError) return `the broker's database failed: ${error.cause?.message ?? "no reason given"}`;
  return error instanceof Error ? error.message : String(error);
}

const RevokeBody = t.Object({ user: t.Optional(t.String({ minLength: 1 })), client: t.Optional(t.String({ minLength: 1 })), grant: t.Optional(t.String({ minLength: 1 })) });

/** Exactly one target, or null: a body naming two must not quietly revoke one of them. */
function revokeTarget(body: typeof RevokeBody.static): RevokeTarget | null {
  const named = (["user", "client", "grant"] as const).filter((key) => body[key] !== undefined);
  if (named.length !== 1) return null;
  const key = named[0]!;
  return { [key]: body[key]! } as RevokeTarget;
}

function adminRoutes(service: AdminService, logger: Logger, keepOpen: (request: Request) => void) {
  const refuse = (status: number, error: string) => Response.json({ error } satisfies ErrorAnswer, { status });
  return new Elysia()
    .onError(({ error, code }) => {
      if (error instanceof AdminNotFoundError) return refuse(404, error.message);
      if (code === "VALIDATION" || code === "PARSE") return refuse(400, "the request does not match the admin protocol");
      if (code === "NOT_FOUND") return refuse(404, "no such admin command");
      logger.error("admin command failed", { error: error instanceof Error ? error : String(error) });
      return refuse(500, failureReason(error));
    })
    .get(ADMIN_ROUTES.sessions, ({ query }) => service.sessions(query.user), { query: t.Object({ user: t.Optional(t.String()) }) })
    .post(
      ADMIN_ROUTES.revoke,
      async ({ body }) => {
        const target = revokeTarget(body);
        if (target === null) return refuse(400, "revoke takes exactly one of user, client, grant");
        const answer = await service.revoke(target);
        logger.info("revoked by the admin command", { target: Object.keys(target)[0], grants: answer.revokedGrants.length });
        return answer;
      },
      { body: RevokeBody },
    )
    .get(ADMIN_ROUTES.clients, () => service.clients())
    .delete(`${ADMIN_ROUTES.clients}/:id`, async ({ params }) => {
      const answer = await service.deleteClient(params.id);
      logger.info("client deleted by the admin command", { client_id: answer.clientId, grants: answer.revokedGrants.length });
      return answer;
    })
    .post(ADMIN_ROUTES.drain, ({ request }) => {
      keepOpen(request);
      logger.info("draining: no new sessions or principal children start here");
      return new Response(jsonLines(service.drain()), { headers: { "Content-Type": "application/jsonl" } });
    });
}

/** The drain's progress as JSON lines; the generator stops when the command hangs up. */
function jsonLines(progress: AsyncGenerator<DrainProgress>): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    async pull(controller) {
      const next = await progress.next();
      if (next.done) controller.close();
      else controller.enqueue(encoder.encode(`${JSON.stringify(next.value)}\n`));
    },
    async cancel() {
      await progress.return(undefined);
    },
  });
}
