// The online backup docs/operations.md gives, run as written against the database of a running broker: both
// `sqlite3 .backup` and `VACUUM INTO` copy what the broker has committed, WAL included, into a consistent file.
import { afterAll, beforeAll, expect, test } from "bun:test";
import { Database } from "bun:sqlite";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBrokerProcess, type BrokerProcess } from "../helpers/broker-process.ts";
import { childCommand } from "../helpers/mcp.ts";

/** No sign-in happens here: a Forgejo the broker is only told about. */
const FORGEJO = { url: "https://forgejo.example.com", clientId: "id", clientSecret: "secret" };

let dataDir: string;
let backups: string;
let broker: BrokerProcess;
beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), "fmb-backup-"));
  backups = mkdtempSync(join(tmpdir(), "fmb-backups-"));
  broker = await startBrokerProcess(FORGEJO, dataDir, { BROKER_CHILD_COMMAND: childCommand() });
});
afterAll(async () => {
  await broker.stop();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(backups, { recursive: true, force: true });
});

async function register(name: string): Promise<string> {
  const response = await fetch(`${broker.url}/oauth/register`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ client_name: name, redirect_uris: ["http://127.0.0.1:9/cb"], token_endpoint_auth_method: "none" }),
  });
  return ((await response.json()) as { client_id: string }).client_id;
}

const commands: [string, (db: string, out: string) => string][] = [
  ["sqlite3 .backup", (db, out) => `umask 077 && sqlite3 ${db} ".backup '${out}'"`],
  ["VACUUM INTO", (db, out) => `umask 077 && sqlite3 ${db} "VACUUM INTO '${out}'"`],
];

test.each(commands)("%s while the broker runs: the copy has the client just registered, passes the integrity check, and is 0600", async (name, command) => {
  const clientId = await register(name);
  const out = join(backups, `${name.replace(/\W+/g, "-")}.sqlite`);
  const shell = Bun.spawn(["sh", "-c", command(join(dataDir, "broker.sqlite"), out)], { stderr: "pipe" });
  expect({ code: await shell.exited, stderr: await new Response(shell.stderr).text() }).toEqual({ code: 0, stderr: "" });

  const copy = new Database(out, { readonly: true });
  try {
    expect(copy.query("PRAGMA integrity_check").get()).toEqual({ integrity_check: "ok" });
    expect(copy.query("SELECT name FROM clients WHERE id = ?").get(clientId)).toEqual({ name });
  } finally {
    copy.close();
  }
  expect((statSync(out).mode & 0o777).toString(8)).toBe("600");
});
