// Health as a load balancer sees it: 200 while every part works, 503 naming the part that does not.
import { expect, test } from "bun:test";
import { startTestBroker } from "../helpers/broker.ts";

test("/healthz turns 503 and names the store when the database is gone", async () => {
  const t = await startTestBroker();
  try {
    expect(await (await fetch(`${t.config.publicUrl}/healthz`)).json()).toEqual({ status: "ok", store: "ok" });
    t.broker.store.close();
    const response = await fetch(`${t.config.publicUrl}/healthz`);
    expect(response.status).toBe(503);
    expect(await response.json()).toEqual({ status: "degraded", store: "failed" });
  } finally {
    await t.stop();
  }
});
