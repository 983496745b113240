// The data directory as an operator finds it beside a running broker: the database and its -wal and
// -shm files readable by the broker's user only, and a sealing key others may read refused at start-up.
import { afterEach, describe, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { chmodSync, existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { brokerEnvFor, freePort } from "../helpers/broker.ts";
import { listening, spawnBroker, startBrokerProcess } from "../helpers/broker-process.ts";
import { childCommand } from "../helpers/mcp.ts";

/** No sign-in happens here: a Forgejo the broker is only told about. */
const FORGEJO = { url: "https://forgejo.example.com", clientId: "id", clientSecret: "secret" };
/** The umask most systems give a service, so only the broker itself keeps its files private. */
const SERVICE_UMASK = 0o022;

let dataDir: string;
afterEach(() => rmSync(dataDir, { recursive: true, force: true }));

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
    const broker = await startBrokerProcess(FORGEJO, dataDir, { BROKER_CHILD_COMMAND: childCommand() }, { umask: SERVICE_UMASK });
    try {
      const registered = await fetch(`${broker.url}/oauth/register`, {
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
      await broker.stop();
    }
  });

  test("a sealing key others may read: exit 2 with one line saying how to fix it", async () => {
    dataDir = mkdtempSync(join(tmpdir(), "fmb-files-"));
    const keyPath = join(dataDir, "sealing.key");
    writeFileSync(keyPath, Buffer.alloc(32, 3).toString("base64") + "\n");
    chmodSync(keyPath, 0o644);
    const broker = spawnBroker({ ...brokerEnvFor(FORGEJO, await freePort(), dataDir), BROKER_CHILD_COMMAND: childCommand() }, { umask: SERVICE_UMASK });
    try {
      // A broker that took the key would say it listens: the test ends there rather than wait for a timeout.
      const outcome = (await broker.stdout.waitFor(listening)) === null ? `exit ${await broker.exited}` : "listening";
      expect(outcome).toBe("exit 2");
    } finally {
      await broker.stop();
    }
    expect(broker.stderr.lines.join("\n").trim()).toBe(
      `config: ${keyPath} has mode 0644, so other users may read the sealing key; run chmod 600 '${keyPath}' and start again`,
    );
  });
});
