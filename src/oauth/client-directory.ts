// Finds the client a client_id names: a registered one in the store, or one whose client_id is the URL
// of its metadata document, fetched (through the cache) and kept as a client row keyed by that URL.
import type { ClientRow, Store } from "../store/store.ts";
import { clientIdUrlProblem, isMetadataDocumentId, validateMetadataDocument, type DocumentClient } from "./client-metadata-document.ts";
import { MetadataDocumentCache, type CachedOutcome, type DocumentCacheOptions } from "./metadata-document-cache.ts";
import { fetchMetadataDocument, type MetadataFetchDeps } from "./metadata-fetch.ts";

export type ClientLookup =
  | { ok: true; client: ClientRow }
  | { ok: false; kind: "unknown" }
  /** A client_id URL whose document cannot be used; `reason` completes "The client_id URL …". */
  | { ok: false; kind: "document"; reason: string };

export interface ClientDirectoryDeps {
  store: Pick<Store, "getClient" | "putDocumentClient">;
  fetch: MetadataFetchDeps;
  now: () => number;
  cache?: DocumentCacheOptions;
}

export class ClientDirectory {
  private readonly documents: MetadataDocumentCache<DocumentClient>;

  constructor(private readonly deps: ClientDirectoryDeps) {
    this.documents = new MetadataDocumentCache((url) => this.loadDocument(url), deps.now, deps.cache);
  }

  /** The client behind `clientId`; a document client's row is brought up to date with its document. */
  async find(clientId: string): Promise<ClientLookup> {
    if (!isMetadataDocumentId(clientId)) {
      const client = await this.deps.store.getClient(clientId);
      return client === undefined ? { ok: false, kind: "unknown" } : { ok: true, client };
    }
    const problem = clientIdUrlProblem(clientId);
    if (problem !== undefined) return { ok: false, kind: "document", reason: problem };
    const document = await this.documents.get(clientId);
    if (!document.ok) return { ok: false, kind: "document", reason: document.reason };
    const { name, redirectUris, metadata } = document.value;
    const client = await this.deps.store.putDocumentClient({
      id: clientId,
      secretHash: null,
      tokenEndpointAuthMethod: "none",
      name,
      redirectUris,
      metadata,
      createdAt: this.deps.now(),
    });
    return { ok: true, client };
  }

  private async loadDocument(url: string): Promise<CachedOutcome<DocumentClient>> {
    const fetched = await fetchMetadataDocument(new URL(url), this.deps.fetch);
    if (!fetched.ok) return fetched;
    const verdict = validateMetadataDocument(url, fetched.body);
    return verdict.ok ? { ok: true, value: verdict.client, maxAgeMs: fetched.maxAgeMs } : verdict;
  }
}
