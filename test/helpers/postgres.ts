// A PostgreSQL database of its own for a test file, on the local server (trust auth): created empty
// from the `test` database, dropped at the end, so runs in parallel never see each other's rows.
import { SQL } from "bun";
import { randomBytes } from "node:crypto";

const SERVER = "postgres://postgres@127.0.0.1:5432";

export interface TestDatabase {
  url: string;
  /** Empties every table the broker made (its migrations stay applied). */
  truncate(): Promise<void>;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `fmb_test_${randomBytes(6).toString("hex")}`;
  const admin = new SQL({ url: `${SERVER}/test`, max: 1 });
  await admin.unsafe(`CREATE DATABASE ${name}`);
  const url = `${SERVER}/${name}`;
  return {
    url,
    truncate: async () => {
      const client = new SQL({ url, max: 1 });
      try {
        await client.unsafe(
          "TRUNCATE clients, authorizations, grants, auth_codes, access_tokens, refresh_tokens, upstream_credentials CASCADE",
        );
      } finally {
        await client.close();
      }
    },
    drop: async () => {
      await admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await admin.close();
    },
  };
}
