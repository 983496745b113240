// The testing API as another project's suite uses it: brokers and stand-ins that share nothing, a sign-in
// that names the step that failed, and stop() leaving no child and no data behind.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { SignInError, signIn, startBroker, startForgejoStandIn, type TestingBroker, type ForgejoStandIn } from "../../src/testing/index.ts";

/** This process's descendants, by pid and command line. */
async function descendants(): Promise<{ pid: number; args: string }[]> {
  const ps = Bun.spawn(["ps", "-eo", "pid=,ppid=,stat=,args="], { stdout: "pipe" });
  const rows = (await new Response(ps.stdout).text())
    .split("\n")
    .map((line) => /^\s*(\d+)\s+(\d+)\s+(\S+)\s+(.*)$/.exec(line))
    .filter((match) => match !== null)
    .map((match) => ({ pid: Number(match[1]), ppid: Number(match[2]), stat: match[3]!, args: match[4]! }));
  await ps.exited;
  const ours = new Set([process.pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const row of rows) if (!ours.has(row.pid) && ours.has(row.ppid) && !row.stat.startsWith("Z")) grew = ours.add(row.pid).has(row.pid);
  }
  return rows.filter((row) => row.pid !== process.pid && ours.has(row.pid) && row.args !== "ps -eo pid=,ppid=,stat=,args=");
}

async function whoami(broker: TestingBroker, accessToken: string): Promise<string> {
  const client = new Client({ name: "api-test", version: "1" });
  await client.connect(new StreamableHTTPClientTransport(new URL(broker.mcpUrl), { requestInit: { headers: { Authorization: `Bearer ${accessToken}` } } }));
  try {
    const result = (await client.callTool({ name: "whoami" })) as { content: { text: string }[] };
    return result.content[0]!.text;
  } finally {
    await client.close();
  }
}

describe("the testing API", () => {
  const started: { stop(): Promise<void> }[] = [];
  afterAll(async () => {
    for (const thing of started.reverse()) await thing.stop();
  });

  test("two brokers and two stand-ins in one process, started in parallel, each with its own users, tokens and data", async () => {
    const [one, two] = await Promise.all(
      [["alice", "bob"], ["carol"]].map(async (users) => {
        const forgejo = await startForgejoStandIn({ users });
        const broker = await startBroker({ forgejo });
        started.push(forgejo, broker);
        return { forgejo, broker };
      }),
    );
    expect(one!.broker.url).not.toBe(two!.broker.url);
    expect(one!.broker.config.dataDir).not.toBe(two!.broker.config.dataDir);

    const [alice, bob, carol] = await Promise.all([
      signIn(one!.broker, { user: "alice" }),
      signIn(one!.broker, { user: "bob" }),
      signIn(two!.broker, { user: "carol" }),
    ]);
    expect(alice.expiresIn).toBeGreaterThan(0);
    expect(await Promise.all([whoami(one!.broker, alice.accessToken), whoami(one!.broker, bob.accessToken), whoami(two!.broker, carol.accessToken)])).toEqual([
      "alice",
      "bob",
      "carol",
    ]);
    // A token of one broker means nothing to the other; each stand-in saw only its own sign-ins.
    await expect(whoami(two!.broker, alice.accessToken)).rejects.toThrow();
    expect(one!.forgejo.stats().codeExchanges).toBe(2);
    expect(two!.forgejo.stats().codeExchanges).toBe(1);
    await expect(signIn(two!.broker, { user: "alice" })).rejects.toThrow(/Forgejo sign-in.*no user alice/);
  }, 60_000);

  test("a sign-in the stand-in refuses fails naming the Forgejo sign-in step", async () => {
    const forgejo: ForgejoStandIn = await startForgejoStandIn({ users: ["alice"] });
    started.push(forgejo);
    const broker = await startBroker({ forgejo });
    started.push(broker);
    forgejo.denyNext();
    const failure = await signIn(broker, { user: "alice" }).catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(SignInError);
    expect((failure as SignInError).step).toBe("Forgejo sign-in");
    expect((failure as SignInError).message).toContain("access_denied");
  }, 30_000);

  test("a sign-in against a broker nobody listens on fails naming registration", async () => {
    const forgejo = await startForgejoStandIn();
    started.push(forgejo);
    const broker = await startBroker({ forgejo });
    await broker.stop();
    await expect(signIn(broker, { user: "alice" })).rejects.toThrow(/^sign-in failed at registration/);
  }, 30_000);

  test("rateLimit: a suite that signs in often raises the OAuth endpoints' limit; past it, registration is the step named", async () => {
    const forgejo = await startForgejoStandIn({ users: ["alice"] });
    started.push(forgejo);
    const [strict, generous] = await Promise.all([
      startBroker({ forgejo, rateLimit: { burst: 2, perSecond: 0.001 } }),
      startBroker({ forgejo, rateLimit: { burst: 100, perSecond: 100 } }),
    ]);
    started.push(strict!, generous!);
    const attempts = (broker: TestingBroker) => Promise.allSettled(Array.from({ length: 4 }, () => signIn(broker, { user: "alice" })));
    const refused = (await attempts(strict!)).filter((outcome) => outcome.status === "rejected");
    expect(refused.length).toBeGreaterThan(0);
    for (const outcome of refused) expect((outcome.reason as SignInError).message).toMatch(/^sign-in failed at registration: .* 429/);
    expect((await attempts(generous!)).every((outcome) => outcome.status === "fulfilled")).toBe(true);
  }, 30_000);

  test("stop() ends every child and listener and removes the data directory", async () => {
    const forgejo = await startForgejoStandIn({ users: ["alice"] });
    started.push(forgejo);
    const before = new Set((await descendants()).map((row) => row.pid));
    const broker = await startBroker({ forgejo, childSandbox: "none", maxSessions: 4 });
    const alice = await signIn(broker, { user: "alice" });
    const client = new Client({ name: "api-test", version: "1" });
    await client.connect(new StreamableHTTPClientTransport(new URL(broker.mcpUrl), { requestInit: { headers: { Authorization: `Bearer ${alice.accessToken}` } } }));
    const newcomers = async () => (await descendants()).filter((row) => !before.has(row.pid));
    expect((await newcomers()).filter((row) => row.args.includes("mcp-child.ts")).length).toBe(1);

    await broker.stop();
    expect(await newcomers()).toEqual([]);
    await expect(fetch(broker.mcpUrl)).rejects.toThrow();
    expect(existsSync(broker.config.dataDir)).toBe(false);
    await client.close().catch(() => {});
  }, 30_000);

  test("options named after the environment variables reach the broker's configuration", async () => {
    const forgejo = await startForgejoStandIn();
    started.push(forgejo);
    const broker = await startBroker({ forgejo, maxSessionsPerUser: 3, allowedOrigins: ["https://a.test", "https://b.test"], child: ["/bin/cat"] });
    started.push(broker);
    expect(broker.config.sessions.maxSessionsPerUser).toBe(3);
    expect(broker.config.sessions.allowedOrigins).toEqual(["https://a.test", "https://b.test"]);
    expect(broker.config.child.command).toEqual(["/bin/cat"]);
    await expect(startBroker({ forgejo, maxSessions: -1 })).rejects.toThrow(/BROKER_MAX_SESSIONS/);
  }, 30_000);
});
