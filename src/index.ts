// Entry point: configuration → child command check → store → app → listen; SIGTERM/SIGINT stop accepting, stop every
// child and wait for it, let in-flight requests finish, close the database, exit 0. Bad configuration or key file exits 2.
import { startBroker } from "./broker.ts";
import { loadConfig } from "./config.ts";
import { SecretFileExposedError } from "./crypto.ts";
import { createLogger } from "./log.ts";
import { checkChildCommand } from "./supervisor/child.ts";

const result = loadConfig(process.env);
const problems = result.ok ? [checkChildCommand(result.config.child.command, process.env)].filter((p) => p !== null) : result.problems;
if (!result.ok || problems.length > 0) {
  for (const problem of problems) console.error(`config: ${problem}`);
  process.exit(2);
}
const config = result.config;
const logger = createLogger({ level: config.logLevel });

const broker = await startBroker(config, { logger }).catch((error: unknown) => {
  if (!(error instanceof SecretFileExposedError)) throw error;
  console.error(`config: ${error.message}`);
  process.exit(2);
});
logger.info("broker listening", { url: broker.url, public_url: config.publicUrl, forgejo_url: config.forgejo.url, child_command: config.child.command[0] });

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
