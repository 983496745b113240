import { defineConfig } from "drizzle-kit";

// The PostgreSQL dialect's migrations, beside (not among) the SQLite ones in ./drizzle.
export default defineConfig({
  dialect: "postgresql",
  schema: "./src/store/pg-schema.ts",
  out: "./drizzle/pg",
});
