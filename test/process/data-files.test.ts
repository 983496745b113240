// The data directory as an operator finds it beside a running broker: the database and its -wal and
// -shm files readable by the broker's user only, and a sealing key others may read refused at start-up.
import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../helpers/broker.ts";
import { childCommand } from "../helpers/mcp.ts";
import { outputLines } from "../helpers/output.ts";

const ENTRY = join(import.meta.dir, "..", "..", "src", "index.ts");

const listening = (line: string) => line.includes('"msg":"broker listening"');

let dataDir: string;
afterEach(() => rmSync(dataDir, { recursive: true, force: true }));

/** `bun src/index.ts` under the umask most systems give a service (022), so only the broker itself keeps its files private. */
function runBroker(port: number) {
  const previous = process.umask(0o022);
  try {
    return Bun.spawn([process.execPath, ENTRY], {
      env: {
        PATH: process.env.PATH ?? "",
        BROKER_PUBLIC_URL: `http://127.0.0.1:${port}`,
        BROKER_PORT: String(port),
        BROKER_DATA_DIR: dataDir,
        FORGEJO_URL: "https://forgejo.example.com",
        FORGEJO_CLIENT_ID: "id",
        FORGEJO_CLIENT_SECRET: "secret",
        BROKER_CHILD_COMMAND: childCommand(),
      },
      stdout: "pipe",
      stderr: "pipe",
    });
  } finally {
    process.umask(previous);
  }
}

describe("the data directory", () => {
  const setups: [string, () => void][] = [
    ["a new data directory", () => {}],
    [
      "a database an older version left 0644",
      () => {
        new Database(join(dataDir, "broker.sqlite")).close();
        chmodSync(join(dataDir, "broker.sqlite"), 0o644);
      },
    ],
  ];
  test.each(setups)("%s: broker.sqlite, its -wal and its -shm are 0600 while the broker writes", async (_, setUp) => {
    dataDir = mkdtempSync(join(tmpdir(), "fmb-files-"));
    setUp();
    const port = await freePort();
    const broker = runBroker(port);
    const stdout = outputLines(broker.stdout);
    try {
      expect(await stdout.waitFor(listening)).not.toBeNull();
      const registered = await fetch(`http://127.0.0.1:${port}/oauth/register`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ redirect_uris: ["http://127.0.0.1:9/cb"], token_endpoint_auth_method: "none" }),
      });
      expect(registered.status).toBe(201);
      const modes = Object.fromEntries(
        ["broker.sqlite", "broker.sqlite-wal", "broker.sqlite-shm", "sealing.key"].map((name) => {
          const path = join(dataDir, name);
          return [name, existsSync(path) ? (statSync(path).mode & 0o777).toString(8) : "missing"];
        }),
      );
      expect(modes).toEqual({ "broker.sqlite": "600", "broker.sqlite-wal": "600", "broker.sqlite-shm": "600", "sealing.key": "600" });
    } finally {
      broker.kill("SIGTERM");
      await broker.exited;
    }
  });

  test("a sealing key others may read: exit 2 with one line saying how to fix it", async () => {
    dataDir = mkdtempSync(join(tmpdir(), "fmb-files-"));
    const keyPath = join(dataDir, "sealing.key");
    writeFileSync(keyPath, Buffer.alloc(32, 3).toString("base64") + "\n");
    chmodSync(keyPath, 0o644);
    const broker = runBroker(await freePort());
    const stdout = outputLines(broker.stdout);
    try {
      // A broker that took the key would say it listens: the test ends there rather than wait for a timeout.
      const outcome = (await stdout.waitFor(listening)) === null ? `exit ${await broker.exited}` : "listening";
      expect(outcome).toBe("exit 2");
    } finally {
      broker.kill("SIGTERM");
      await broker.exited;
    }
    expect((await new Response(broker.stderr).text()).trim()).toBe(
      `config: ${keyPath} has mode 0644, so other users may read the sealing key; run chmod 600 '${keyPath}' and start again`,
    );
  });
});
