// The store in each dialect, for suites that run the same tests on both: SQLite in memory, and
// PostgreSQL in a database of this test file's own, emptied before each test and dropped after the file.
import { afterAll, afterEach } from "bun:test";
import { sql } from "drizzle-orm";
import { PgStore } from "../../src/store/pg-store.ts";
import { SqliteStore } from "../../src/store/sqlite-store.ts";
import type { Store } from "../../src/store/store.ts";
import { createTestDatabase } from "./postgres.ts";

export interface StoreDialect {
  /** An empty store, closed after the test. */
  open(): Promise<Store>;
  /** How many rows a table holds, read past the store's interface. */
  rowCount(store: Store, table: string): Promise<number>;
  /** The columns of each index on a table, as the migrations made them. */
  indexedColumns(store: Store, table: string): Promise<string[][]>;
}

/** Call at the top level of a test file: [name, dialect] rows for describe.each. */
export async function storeDialects(): Promise<[string, StoreDialect][]> {
  const postgres = await createTestDatabase();
  const opened: Store[] = [];
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((store) => store.close()));
  });
  afterAll(() => postgres.drop());
  const track = <T extends Store>(store: T): T => (opened.push(store), store);
  return [
    [
      "SQLite",
      {
        open: async () => track(SqliteStore.open(":memory:")),
        rowCount: async (store, table) => (store as SqliteStore).db.all<{ n: number }>(sql.raw(`SELECT count(*) AS n FROM ${table}`))[0]!.n,
        indexedColumns: async (store, table) => {
          const { db } = store as SqliteStore;
          const indexes = db.all<{ name: string }>(sql`SELECT name FROM pragma_index_list(${table})`);
          return indexes.map(({ name }) => db.all<{ name: string }>(sql`SELECT name FROM pragma_index_info(${name}) ORDER BY seqno`).map((column) => column.name));
        },
      },
    ],
    [
      "PostgreSQL",
      {
        open: async () => {
          const store = track(await PgStore.open(postgres.url));
          await postgres.truncate();
          return store;
        },
        rowCount: async (store, table) => {
          const [row] = await (store as PgStore).db.execute<{ n: number }>(sql.raw(`SELECT count(*)::int AS n FROM ${table}`));
          return row!.n;
        },
        indexedColumns: async (store, table) => {
          const rows = await (store as PgStore).db.execute<{ columns: string[] }>(sql`
            SELECT array_agg(a.attname ORDER BY k.n) AS columns
            FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = ${table}::regclass GROUP BY i.indexrelid`);
          return rows.map((row) => row.columns);
        },
      },
    ],
  ];
}
