// `bun run bench/short-tokens.ts`: a broker with the default refresh lead against a Forgejo stand-in whose
// access tokens live 20 s, users' sessions calling a tool every second for 2 minutes; prints each user's
// upstream refreshes and the intervals between them, the rotations, and the calls answered and failed.
import { parseArgs } from "node:util";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { startTestBroker } from "../test/helpers/broker.ts";
import { childCommand, processesMatching } from "../test/helpers/mcp.ts";
import { obtainTokens } from "../src/testing/oauth-client.ts";

const USAGE = `usage: bun run bench/short-tokens.ts [--seconds 120] [--ttl 20] [--sessions 3] [--every-ms 1000]
  --seconds    how long the sessions keep calling
  --ttl        how long the stand-in's access tokens live, in seconds
  --sessions   sessions per user (two users: alice and bob)
  --every-ms   how often each session calls whoami`;

const { values } = parseArgs({
  args: Bun.argv.slice(2),
  options: {
    seconds: { type: "string", default: "120" },
    ttl: { type: "string", default: "20" },
    sessions: { type: "string", default: "3" },
    "every-ms": { type: "string", default: "1000" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const positive = (name: string, text: string) => {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) {
    console.error(`short-tokens: --${name} must be a positive number, not ${JSON.stringify(text)}\n\n${USAGE}`);
    process.exit(2);
  }
  return value;
};
const seconds = positive("seconds", values.seconds);
const ttlS = positive("ttl", values.ttl);
const sessionsPerUser = Math.floor(positive("sessions", values.sessions));
const everyMs = positive("every-ms", values["every-ms"]);
const USERS = ["alice", "bob"];

const marker = `--short-tokens-bench-${crypto.randomUUID()}`;
const t = await startTestBroker({ forgejo: { accessTokenTtlS: ttlS }, env: { BROKER_CHILD_COMMAND: childCommand(marker) } });
console.log(
  `Forgejo stand-in access tokens live ${ttlS} s; BROKER_REFRESH_LEAD_S=${t.config.sessions.refreshLeadMs / 1000}; ` +
    `${USERS.length} users × ${sessionsPerUser} sessions, whoami on each every ${everyMs} ms for ${seconds} s`,
);

const sessions: { login: string; client: Client; id: string }[] = [];
for (const login of USERS) {
  t.forgejo.setCurrentUser(login);
  const { accessToken } = await obtainTokens(t.config.publicUrl);
  for (let i = 0; i < sessionsPerUser; i++) {
    const transport = new StreamableHTTPClientTransport(new URL(t.mcpUrl), { requestInit: { headers: { authorization: `Bearer ${accessToken}` } } });
    const client = new Client({ name: "short-tokens-bench", version: "1.0.0" });
    await client.connect(transport);
    sessions.push({ login, client, id: transport.sessionId! });
  }
}

const started = performance.now();
const endAt = started + seconds * 1000;
const answered = new Map<string, number>(USERS.map((login) => [login, 0]));
const failures = new Map<string, number>();
await Promise.all(
  sessions.map(async ({ login, client }) => {
    // Calls on a fixed beat from the start: a slow answer delays the next call, it does not add one.
    for (let tick = 0; started + tick * everyMs < endAt; tick++) {
      const wait = started + tick * everyMs - performance.now();
      if (wait > 0) await Bun.sleep(wait);
      try {
        const result = await client.callTool({ name: "whoami", arguments: {} });
        const text = (result.content as { text?: string }[])[0]?.text;
        if (result.isError === true || text !== login) throw new Error(`answered ${JSON.stringify(result.content)}`);
        answered.set(login, answered.get(login)! + 1);
      } catch (error) {
        const reason = error instanceof Error ? error.message : String(error);
        failures.set(reason, (failures.get(reason) ?? 0) + 1);
      }
    }
  }),
);
const elapsedS = (performance.now() - started) / 1000;

const count = (needle: string, sessionId: string) => t.logs.filter((line) => line.includes(needle) && line.includes(sessionId)).length;
const fmt = (ms: number) => (ms / 1000).toFixed(1);
console.log(`\nran ${elapsedS.toFixed(1)} s; the stand-in received ${t.forgejo.stats.refreshes} refresh requests in all\n`);
console.log("user   refreshes  interval s (min / median / max)  rotations (moved / failed)  calls answered");
for (const login of USERS) {
  // The first issuance is the sign-in; every later one is a refresh.
  const issued = t.forgejo.issuanceTimes(login);
  const intervals = issued.slice(1).map((at, i) => at - issued[i]!);
  const sorted = [...intervals].sort((a, b) => a - b);
  const ids = sessions.filter((session) => session.login === login).map((session) => session.id);
  const moved = ids.reduce((sum, id) => sum + count('"msg":"session moved to a child with the refreshed token"', id), 0);
  const failed = ids.reduce((sum, id) => sum + count('"msg":"could not move a session to a child with the refreshed token', id), 0);
  const spread = sorted.length === 0 ? "-" : `${fmt(sorted[0]!)} / ${fmt(sorted[Math.floor(sorted.length / 2)]!)} / ${fmt(sorted.at(-1)!)}`;
  console.log(
    `${login.padEnd(6)} ${String(intervals.length).padStart(9)}  ${spread.padStart(31)}  ${`${moved} / ${failed}`.padStart(26)}  ${String(answered.get(login)).padStart(14)}`,
  );
  console.log(`       intervals: ${intervals.map(fmt).join(" ")}`);
}
const failedCalls = [...failures.values()].reduce((sum, n) => sum + n, 0);
console.log(`\ncalls: ${[...answered.values()].reduce((sum, n) => sum + n, 0)} answered, ${failedCalls} failed`);
for (const [reason, n] of failures) console.log(`  ${n} × ${reason}`);

await Promise.all(sessions.map(({ client }) => client.close()));
await t.stop();
const left = await processesMatching(marker);
console.log(`children left after stop: ${left.length}`);
process.exit(failedCalls === 0 && left.length === 0 ? 0 : 1);
