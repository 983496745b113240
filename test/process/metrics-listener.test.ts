// BROKER_METRICS_ADDR as an operator meets it: an address the broker cannot listen on is a configuration
// problem, one line and exit 2, before anything is opened; a free one serves /metrics beside the main listener.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { brokerEnvFor, freePort } from "../helpers/broker.ts";
import { listening, spawnBroker } from "../helpers/broker-process.ts";
import { childCommand } from "../helpers/mcp.ts";

describe("BROKER_METRICS_ADDR", () => {
  let forgejo: FakeForgejo;
  let dataDir: string;
  beforeAll(async () => {
    forgejo = await startFakeForgejo();
    dataDir = mkdtempSync(join(tmpdir(), "fmb-metrics-listener-"));
  });
  afterAll(async () => {
    await forgejo.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const env = async (metricsPort: number) => ({
    ...brokerEnvFor(forgejo, await freePort(), dataDir),
    BROKER_CHILD_COMMAND: childCommand(),
    BROKER_METRICS_ADDR: `127.0.0.1:${metricsPort}`,
  });

  test("on a port in use: one line naming the variable and the address, exit 2", async () => {
    const taken = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("someone else") });
    try {
      const broker = spawnBroker(await env(taken.port!));
      expect(await broker.exited).toBe(2);
      expect(broker.stderr.lines.join("\n").trim()).toBe(`config: BROKER_METRICS_ADDR: cannot listen on 127.0.0.1:${taken.port}: the port is in use`);
    } finally {
      await taken.stop(true);
    }
  });

  test("on a free port: /metrics there, with no token", async () => {
    const port = await freePort();
    const broker = spawnBroker(await env(port));
    try {
      expect(await broker.stdout.waitFor(listening)).not.toBeNull();
      const response = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(response.status).toBe(200);
      expect(await response.text()).toContain("fmb_children 0");
    } finally {
      expect(await broker.stop()).toBe(0);
    }
  });
});
