// Entry point: configuration → child command check → sandbox probe → store → app → listen; SIGTERM/SIGINT start no new session
// nor modern call (/healthz 503), leave the replicas' directory, stop accepting, let the calls in flight of both eras finish
// (10 s at most), stop every child and wait for it, close the database, exit 0. Bad configuration, key file,
// a metrics address it cannot listen on, a sandbox that does not work here, or a data directory another broker runs on
// (its admin socket answers) exits 2.
import { AdminSocketError } from "./admin/socket-server.ts";
import { startBroker } from "./broker.ts";
import { hiddenFromChildren, loadConfig } from "./config.ts";
import { SecretFileExposedError } from "./crypto.ts";
import { MetricsListenerError } from "./observability/metrics-endpoint.ts";
import { createLogger } from "./log.ts";
import { checkChildCommand } from "./supervisor/child.ts";
import { probeSandbox, SandboxUnavailableError } from "./supervisor/sandbox.ts";

const result = loadConfig(process.env);
const problems = result.ok ? [checkChildCommand(result.config.child.command, process.env)].filter((p) => p !== null) : result.problems;
if (!result.ok || problems.length > 0) {
  for (const problem of problems) console.error(`config: ${problem}`);
  process.exit(2);
}
const config = result.config;
const logger = createLogger({ level: config.logLevel });

const sandbox = await probeSandbox(config.child.sandbox, hiddenFromChildren(config), { path: process.env.PATH ?? "" }).catch((error: unknown) => {
  if (!(error instanceof SandboxUnavailableError)) throw error;
  console.error(`config: ${error.message}`);
  process.exit(2);
});
if (sandbox.kind === "none") {
  logger.warn("children run unsandboxed (BROKER_CHILD_SANDBOX=none): each can read every other child's token and the broker's secrets");
}

const broker = await startBroker(config, { logger, sandbox }).catch((error: unknown) => {
  if (!(error instanceof SecretFileExposedError || error instanceof AdminSocketError || error instanceof MetricsListenerError)) throw error;
  console.error(`config: ${error.message}`);
  process.exit(2);
});

let signalled = false;
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    if (signalled) return;
    signalled = true;
    logger.info("shutting down", { signal });
    broker.stop().then(
      () => process.exit(0),
      (error) => {
        logger.error("shutdown failed", { error });
        process.exit(1);
      },
    );
  });
}
// Only now: whoever waits for this line may signal the broker, and the handlers above must be in place.
logger.info("broker listening", { url: broker.url, public_url: config.publicUrl, forgejo_url: config.forgejo.url, child_command: config.child.command[0] });
