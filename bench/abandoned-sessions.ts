// `npx bun run bench/abandoned-sessions.ts`: one user opens sessions one after another and never ends
// one, as real clients do, against `bun src/index.ts` with the stand-in child; prints whether each
// started and answered, the most children alive at once, and the broker's RSS along the way.
import { parseArgs } from "node:util";
import { CHILD_SCRIPT } from "../test/helpers/mcp.ts";
import { startFakeForgejo, type FakeForgejo } from "../src/testing/forgejo-stand-in.ts";
import { startBroker, stopAllGateways, type Gateway } from "./lib/gateways.ts";
import { childrenOf, describeDescendants, isAlive, rssKb } from "./lib/proc.ts";

const USAGE = `usage: bun run bench/abandoned-sessions.ts [--sessions 2000] [--cap 20] [--max-minutes 30]
  --sessions     sessions opened one after another, never DELETEd
  --cap          BROKER_MAX_SESSIONS_PER_USER (the bench's broker also gets it as BROKER_MAX_SESSIONS)
  --max-minutes  the run stops there even if unfinished (and says so)`;

const { values } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    sessions: { type: "string", default: "2000" },
    cap: { type: "string", default: "20" },
    "max-minutes": { type: "string", default: "30" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const sessions = Number(values.sessions);
const cap = Number(values.cap);
const maxMs = Number(values["max-minutes"]) * 60_000;
if (![sessions, cap, maxMs].every((n) => Number.isInteger(n) && n > 0)) {
  console.error(`abandoned-sessions: --sessions, --cap and --max-minutes take whole numbers above 0\n\n${USAGE}`);
  process.exit(2);
}
/** Per HTTP request: a session that cannot start or answer in this long counts as failed. */
const REQUEST_TIMEOUT_MS = 30_000;
const log = (line: string) => process.stderr.write(line + "\n");

let forgejo: FakeForgejo | undefined;
let broker: Gateway | undefined;
const cleanup = async () => {
  await stopAllGateways();
  await forgejo?.stop();
};
for (const [signal, status] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
  process.on(signal, () => void cleanup().then(() => process.exit(status)));
}

async function post(token: string, body: unknown, sessionId?: string): Promise<Response> {
  return fetch(broker!.url, {
    method: "POST",
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    headers: {
      authorization: `Bearer ${token}`,
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      "mcp-protocol-version": "2025-11-25",
      ...(sessionId === undefined ? {} : { "mcp-session-id": sessionId }),
    },
    body: JSON.stringify(body),
  });
}

/** initialize, notifications/initialized, one echo call; the session id, or why it failed. */
async function openAndCall(token: string, n: number): Promise<{ ok: true; id: string } | { ok: false; reason: string }> {
  const init = await post(token, {
    jsonrpc: "2.0",
    id: 1,
    method: "initialize",
    params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "abandoned-sessions", version: "1" } },
  });
  const initText = await init.text();
  const id = init.headers.get("mcp-session-id");
  if (init.status !== 200 || id === null) return { ok: false, reason: `initialize answered ${init.status}: ${initText.slice(0, 200)}` };
  const initialized = await post(token, { jsonrpc: "2.0", method: "notifications/initialized" }, id);
  await initialized.body?.cancel();
  if (initialized.status !== 202) return { ok: false, reason: `notifications/initialized answered ${initialized.status}` };
  const call = await post(token, { jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "echo", arguments: { text: `session ${n}` } } }, id);
  const callText = await call.text();
  if (call.status !== 200 || !callText.includes(`session ${n}`)) return { ok: false, reason: `tools/call answered ${call.status}: ${callText.slice(0, 200)}` };
  return { ok: true, id };
}

const mib = (kb: number) => `${(kb / 1024).toFixed(1)} MiB`;

let exitStatus = 0;
try {
  forgejo = await startFakeForgejo();
  broker = await startBroker({ child: { name: "mcp-child", argv: [process.execPath, CHILD_SCRIPT] }, forgejo, maxSessions: cap, logLevel: "warn", sandbox: "bwrap" });
  const token = broker.token!;
  const pid = broker.pid;

  // Children alive (the broker's own, one bwrap per session; zombies are not alive) and every
  // descendant (the sandboxes' inits and servers too), sampled every 10 ms and after each session.
  let mostAlive = 0;
  let mostDescendants = 0;
  const sampleChildren = () => {
    const { total } = describeDescendants(pid);
    mostAlive = Math.max(mostAlive, childrenOf(pid).filter(isAlive).length);
    mostDescendants = Math.max(mostDescendants, total);
  };
  const sampler = setInterval(sampleChildren, 10);

  const rss: { after: number; kb: number }[] = [{ after: 0, kb: rssKb(pid) }];
  const checkpoints = new Set([500, 1000, 1500, 2000, sessions]);
  const failures: string[] = [];
  const opened: string[] = [];
  const started = performance.now();
  let done = 0;
  for (let n = 1; n <= sessions && performance.now() - started < maxMs; n++) {
    const outcome = await openAndCall(token, n).catch((error: unknown) => ({ ok: false as const, reason: String(error) }));
    if (outcome.ok) opened.push(outcome.id);
    else if (failures.push(`session ${n}: ${outcome.reason}`) <= 5) log(`session ${n} failed: ${outcome.reason}`);
    done = n;
    sampleChildren();
    if (checkpoints.has(n)) rss.push({ after: n, kb: rssKb(pid) });
    if (n % 100 === 0) log(`${n} sessions, ${((performance.now() - started) / 1000).toFixed(0)} s, broker RSS ${mib(rssKb(pid))}, most children alive ${mostAlive}`);
  }
  clearInterval(sampler);
  const seconds = (performance.now() - started) / 1000;

  // The first session was evicted long ago; the last one still serves.
  const first = opened.length > 0 ? (await post(token, { jsonrpc: "2.0", id: 3, method: "tools/list" }, opened[0])).status : null;
  const last = opened.length > 0 ? (await post(token, { jsonrpc: "2.0", id: 3, method: "tools/list" }, opened.at(-1))).status : null;

  console.log(`abandoned sessions: one user, ${done} of ${sessions} sessions opened one after another in ${seconds.toFixed(0)} s, none ended by the client`);
  console.log(`  BROKER_MAX_SESSIONS_PER_USER = BROKER_MAX_SESSIONS = ${cap}; child: bun ${CHILD_SCRIPT.replace(/.*\/test\//, "test/")}`);
  console.log(`  started and answered an echo call: ${opened.length} of ${done}; failed: ${failures.length}`);
  console.log(`  most children alive at once: ${mostAlive} (most descendants, zombies included: ${mostDescendants})`);
  console.log(`  first session afterwards: ${first} (evicted: 404 expected); last session: ${last} (200 expected)`);
  console.log(`  broker RSS: ${rss.map(({ after, kb }) => `${after === 0 ? "start" : `after ${after}`} ${mib(kb)}`).join(", ")}`);
  if (done < sessions || failures.length > 0 || mostAlive > cap || first !== 404 || last !== 200) exitStatus = 1;
} catch (error) {
  log(`abandoned-sessions: ${error instanceof Error ? error.message : String(error)}`);
  exitStatus = 1;
} finally {
  const report = await broker?.stop();
  await forgejo?.stop();
  if (report !== undefined && report.stragglers > 0) {
    log(`abandoned-sessions: ${report.stragglers} children outlived the broker (killed)`);
    exitStatus = 1;
  }
}
process.exit(exitStatus);
