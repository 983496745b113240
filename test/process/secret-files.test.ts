// The broker's secrets as another process of its uid finds them: handed in files (as systemd's LoadCredential= does),
// neither the client secret nor the sealing key is in /proc/<broker>/environ or in the log, and the broker uses both.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { startBrokerProcess } from "../helpers/broker-process.ts";
import { childCommand, openSession } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";

let forgejo: FakeForgejo;
let dir: string;

beforeAll(async () => {
  forgejo = await startFakeForgejo();
  dir = mkdtempSync(join(tmpdir(), "fmb-secret-files-"));
});

afterAll(async () => {
  await forgejo.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("secrets from *_FILE: not in the broker's environ nor its log, and sign-in and sessions work with them", async () => {
  const key = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64");
  const secretPath = join(dir, "forgejo_client_secret");
  const keyPath = join(dir, "broker_sealing_key");
  writeFileSync(secretPath, `${forgejo.clientSecret}\n`, { mode: 0o600 });
  writeFileSync(keyPath, `${key}\n`, { mode: 0o600 });
  const dataDir = join(dir, "data");
  const broker = await startBrokerProcess(forgejo, dataDir, {
    // brokerEnvFor names the secret itself; empty is unset, and shows what else is in the environ.
    FORGEJO_CLIENT_SECRET: "",
    FORGEJO_CLIENT_SECRET_FILE: secretPath,
    BROKER_SEALING_KEY_FILE: keyPath,
    BROKER_CHILD_COMMAND: childCommand(),
  });
  try {
    const environ = readFileSync(`/proc/${broker.pid}/environ`, "utf8").split("\0");
    expect(environ).toContain(`FORGEJO_CLIENT_SECRET_FILE=${secretPath}`);
    expect(environ.filter((entry) => entry.includes(forgejo.clientSecret) || entry.includes(key))).toEqual([]);

    // Forgejo's code exchange checks the client secret, and a session unseals the user's Forgejo token with the key.
    const { accessToken } = await obtainTokens(broker.url);
    await openSession(broker.mcpUrl, accessToken); // throws unless initialize answers 200
    expect(existsSync(join(dataDir, "sealing.key"))).toBe(false);

    expect(broker.log()).toContain('"msg":"broker listening"');
    expect(broker.log()).not.toContain(forgejo.clientSecret);
    expect(broker.log()).not.toContain(key);
  } finally {
    expect(await broker.stop()).toBe(0);
  }
});
