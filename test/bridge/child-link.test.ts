// A real child that does not read its stdin behind a ChildLink: the link takes messages up to its
// bound and then refuses them, so the broker's memory does not grow with what the child leaves unread.
import { afterEach, describe, expect, test } from "bun:test";
import { ChildLink, STDIN_LIMIT_MESSAGES, type LinkWrite } from "../../src/bridge/child-link.ts";
import { createMemoryLogger } from "../../src/log.ts";
import { createSpawnChild, type ChildProcess } from "../../src/supervisor/child.ts";
import { waitWhile } from "../helpers/promises.ts";

const MAX_MESSAGE_BYTES = 64 * 1024;

const started: ChildProcess[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((child) => child.stop()));
});

/** A child that reads nothing until SIGUSR1, behind a link; resolves once it is running. */
async function lazyReader() {
  const logger = createMemoryLogger();
  const spawn = createSpawnChild({
    config: {
      command: ["sh", "-c", `trap "exec cat > /dev/null" USR1; sleep 600 & echo '{"jsonrpc":"2.0","method":"ready"}'; wait`],
      urlEnv: "FORGEJO_URL",
      tokenEnv: "FORGEJO_ACCESS_TOKEN",
      passthroughEnv: [],
      stopGraceMs: 2000,
      sandbox: { kind: "none", bind: [] },
      era: "legacy",
    },
    // About backpressure, not the sandbox: SIGUSR1 goes to the server's own pid.
    sandbox: { kind: "none" },
    forgejoUrl: "https://forgejo.test",
    env: { PATH: process.env.PATH },
    logger,
  });
  const child = spawn({ sessionId: "s", token: "gto_usertokenusertoken" });
  started.push(child);
  const ready = Promise.withResolvers<void>();
  const link = new ChildLink(child, logger, MAX_MESSAGE_BYTES, { onMessage: () => ready.resolve(), onExit: () => {} });
  await ready.promise;
  return { child, link };
}

/** A JSON-RPC notification of nearly the largest size. */
const message = JSON.stringify({ jsonrpc: "2.0", method: "notifications/message", params: { data: "x".repeat(MAX_MESSAGE_BYTES - 100) } });

describe("a child that does not read its stdin", () => {
  test("takes messages up to the bound, then refuses them without holding more; takes them again once it reads", async () => {
    const { child, link } = await lazyReader();
    const outcomes: LinkWrite[] = [];
    // Far more than the pipe and the bound hold together.
    for (let i = 0; i < 8 * STDIN_LIMIT_MESSAGES + 64; i++) outcomes.push(link.write(message));
    const taken = outcomes.filter((outcome) => outcome === "written").length;
    expect(outcomes.at(-1)).toBe("full");
    expect(outcomes.slice(taken)).toEqual(outcomes.slice(taken).map(() => "full"));
    // What waits in the broker stays within the bound; what the pipe took is the kernel's.
    expect(child.stdinBacklog).toBeGreaterThan(0);
    expect(child.stdinBacklog).toBeLessThanOrEqual(link.maxStdinBytes);
    expect(taken * message.length).toBeGreaterThan(link.maxStdinBytes);

    process.kill(child.pid, "SIGUSR1");
    await waitWhile(() => child.stdinBacklog > 0, 300, 10);
    expect(link.write(message)).toBe("written");
  });

  test("a child that has exited is closed to writes", async () => {
    const { child, link } = await lazyReader();
    await child.stop();
    expect(link.write(message)).toBe("closed");
  });
});
