// The schema of an OAuth parameter at the edge (query or form field), shared by the endpoints:
// optional, so that each handler answers a missing one with its own OAuth error, and bounded in length.
import { t } from "elysia";

export const optionalParam = t.Optional(t.String({ maxLength: 4000 }));
