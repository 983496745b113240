// Runs a built image as the Quadlet unit would (read-only, no capabilities, no new privileges, /proc unmasked, the two
// secrets as podman secrets mounted for uid 10001, a named /data volume) against a Forgejo stand-in on this host, and
// checks what an operator would: the broker's uid, /healthz, a writable /data, a sign-in, a session and a tool call.
//
//   npx bun deploy/smoke-image.ts [image]      (as root, after deploy/build-offline.sh; default localhost/forgejo-mcp-broker:offline)
//
// Host networking (not the Quadlet's published port): the stand-in listens on this host's loopback, and the
// broker must reach it there. EXTRA_PODMAN_ARGS (space-separated) adds options such as the ulimits a VM may need,
// and extra -e settings (e.g. -e BROKER_CHILD_SANDBOX=none where bubblewrap cannot run in the container).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../src/testing/broker.ts";
import { signIn, startForgejoStandIn } from "../src/testing/index.ts";

const image = process.argv[2] ?? "localhost/forgejo-mcp-broker:offline";
const name = `fmb-smoke-${randomBytes(4).toString("hex")}`;
const extra = (process.env.EXTRA_PODMAN_ARGS ?? "").split(/\s+/).filter(Boolean);

async function podman(args: string[]): Promise<string> {
  const proc = Bun.spawn(["podman", ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  if (code !== 0) throw new Error(`podman ${args.join(" ")} exited ${code}: ${err.trim()}`);
  return out.trim();
}

function check(what: string, ok: boolean, detail: string): void {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}: ${detail}`);
  if (!ok) process.exitCode = 1;
}

const forgejo = await startForgejoStandIn({ users: ["alice"] });
const port = await freePort();
const issuer = `http://127.0.0.1:${port}`;
const secretDir = mkdtempSync(join(tmpdir(), "fmb-smoke-"));
const secretFile = join(secretDir, "secret");
let started = false;
try {
  // podman secret create reads "-" only from a pipe, which Bun's stdin is not: a file of the root's, removed at once.
  for (const [secret, value] of [["client", forgejo.clientSecret], ["key", randomBytes(32).toString("base64")]] as const) {
    writeFileSync(secretFile, value, { mode: 0o600 });
    await podman(["secret", "create", `${name}-${secret}`, secretFile]);
    rmSync(secretFile);
  }
  // prettier-ignore
  await podman(["run", "-d", "--name", name, "--network", "host",
    "--read-only", "--tmpfs", "/run/secrets", "--security-opt", "no-new-privileges", "--cap-drop", "ALL", "--security-opt", "unmask=/proc/*",
    "-v", `${name}-data:/data`,
    "--secret", `${name}-client,type=mount,target=/run/secrets/forgejo_client_secret,uid=10001,gid=10001,mode=0400`,
    "--secret", `${name}-key,type=mount,target=/run/secrets/broker_sealing_key,uid=10001,gid=10001,mode=0400`,
    "-e", "FORGEJO_CLIENT_SECRET_FILE=/run/secrets/forgejo_client_secret", "-e", "BROKER_SEALING_KEY_FILE=/run/secrets/broker_sealing_key",
    "-e", `BROKER_PUBLIC_URL=${issuer}`, "-e", `BROKER_PORT=${port}`, "-e", "BROKER_HOST=127.0.0.1",
    "-e", `FORGEJO_URL=${forgejo.url}`, "-e", `FORGEJO_CLIENT_ID=${forgejo.clientId}`,
    ...extra, image]);
  started = true;

  // Up to 30 s for Bun to start, migrate the database and probe the sandbox; an exited container ends the wait.
  let health = "";
  for (let attempt = 0; attempt < 60 && health === ""; attempt++) {
    if ((await podman(["inspect", "-f", "{{.State.Running}}", name])) !== "true") break;
    health = await fetch(`${issuer}/healthz`).then((r) => `${r.status} ${r.statusText}`, () => "");
    if (health === "") await Bun.sleep(500);
  }
  check("/healthz", health.startsWith("200"), health || `no answer; logs:\n${await podman(["logs", name]).catch(String)}`);
  if (health === "") throw new Error("the broker did not come up");

  const uid = await podman(["exec", name, "awk", "/^Uid:/ {print $2, $3}", "/proc/1/status"]);
  check("the broker's uid (real, effective)", uid === "10001 10001", uid);
  const data = await podman(["exec", name, "sh", "-c", "touch /data/smoke && rm /data/smoke && ls /data"]);
  check("/data writable, the broker's database in it", data.split("\n").includes("broker.sqlite"), data.replace(/\n/g, " "));

  const tokens = await signIn({ issuer }, { user: "alice", clientName: "image smoke check" });
  check("sign-in through the broker and the Forgejo stand-in", tokens.accessToken.length > 0, `access token for ${tokens.expiresIn} s`);
  const client = new Client({ name: "image-smoke", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(`${issuer}/mcp`), { requestInit: { headers: { Authorization: `Bearer ${tokens.accessToken}` } } }));
  const tools = await client.listTools();
  check("a session: tools/list", tools.tools.some((tool) => tool.name === "whoami"), tools.tools.map((tool) => tool.name).join(", "));
  const whoami = (await client.callTool({ name: "whoami", arguments: {} })) as { content: { type: string; text: string }[] };
  check("tools/call whoami, answered by the image's forgejo-mcp", whoami.content[0]?.text === "alice", JSON.stringify(whoami.content));
  const children = await podman(["exec", name, "sh", "-c", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -E '^(/usr/bin/bwrap|/usr/local/bin/forgejo-mcp)' || true"]);
  check("the child runs in the container, in bubblewrap", /^\/usr\/bin\/bwrap .*\/usr\/local\/bin\/forgejo-mcp/m.test(children), children.replace(/\n/g, " | ") || "none");
  await client.close();

  const stopped = Date.now();
  await podman(["stop", "-t", "40", name]);
  const exit = await podman(["inspect", "-f", "{{.State.ExitCode}}", name]);
  check("podman stop: SIGTERM drains and the broker exits", exit === "0", `exit code ${exit} after ${Date.now() - stopped} ms`);
} catch (error) {
  check("smoke run", false, error instanceof Error ? error.message : String(error));
  if (started) console.log(await podman(["logs", name]).catch(String));
} finally {
  await forgejo.stop();
  rmSync(secretDir, { recursive: true, force: true });
  await podman(["rm", "-f", name]).catch(() => "");
  await podman(["volume", "rm", "-f", `${name}-data`]).catch(() => "");
  await podman(["secret", "rm", `${name}-client`, `${name}-key`]).catch(() => "");
}
