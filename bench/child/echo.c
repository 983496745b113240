/*
 * bench-echo-c: the lightest stdio MCP child we could make, for the 1,000-session scale point.
 *
 * Newline-delimited JSON-RPC on stdin/stdout, correct for exactly these messages:
 *   initialize, notifications/initialized (and any other notification: ignored), tools/list,
 *   tools/call "echo" (answers arguments.text) and "progress" (5 notifications/progress when the
 *   request carries _meta.progressToken, then the answer), ping; any other request gets -32601.
 * The JSON handling is hand-rolled: a scanner that finds the raw text of a few keys and copies
 * values (ids, the echoed text, the progress token) through byte for byte, so nothing is decoded
 * or re-encoded. No allocation after start-up, one write(2) per message, exits on EOF.
 * Built by bench/lib/build.ts (gcc -O2 -static); never committed.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#define IN_CAP (4 * 1024 * 1024)
#define OUT_CAP (IN_CAP + 4096)

static char in[IN_CAP];
static char out[OUT_CAP];
static size_t out_len;

typedef struct { const char *p; size_t n; } span; /* raw JSON text of a value; n == 0: absent */

static void put(const char *s, size_t n) {
  if (out_len + n > OUT_CAP) n = OUT_CAP - out_len; /* cannot happen for lines under IN_CAP */
  memcpy(out + out_len, s, n);
  out_len += n;
}
static void puts_(const char *s) { put(s, strlen(s)); }
static void put_span(span v) { put(v.p, v.n); }

static void flush_out(void) {
  size_t off = 0;
  while (off < out_len) {
    ssize_t w = write(1, out + off, out_len - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      _exit(0); /* the reader is gone */
    }
    off += (size_t)w;
  }
  out_len = 0;
}

static const char *ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
  return p;
}

/* Returns the end of the JSON value starting at p (after whitespace), or NULL if malformed. */
static const char *skip_value(const char *p, const char *end) {
  p = ws(p, end);
  if (p >= end) return NULL;
  if (*p == '"') {
    for (p++; p < end; p++) {
      if (*p == '\\') p++;
      else if (*p == '"') return p + 1;
    }
    return NULL;
  }
  if (*p == '{' || *p == '[') {
    int depth = 0;
    for (; p < end; p++) {
      if (*p == '"') {
        const char *q = skip_value(p, end);
        if (q == NULL) return NULL;
        p = q - 1;
      } else if (*p == '{' || *p == '[') depth++;
      else if (*p == '}' || *p == ']') {
        if (--depth == 0) return p + 1;
      }
    }
    return NULL;
  }
  /* number, true, false, null */
  while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') p++;
  return p;
}

/* The raw value of key `key` in the object `obj` (top level of that object only). */
static span get(span obj, const char *key) {
  span none = {0, 0};
  const char *p = obj.p, *end = obj.p + obj.n;
  size_t klen = strlen(key);
  p = ws(p, end);
  if (p >= end || *p != '{') return none;
  p++;
  for (;;) {
    p = ws(p, end);
    if (p >= end || *p == '}') return none;
    if (*p != '"') return none;
    const char *kend = skip_value(p, end);
    if (kend == NULL) return none;
    int match = (size_t)(kend - p) == klen + 2 && memcmp(p + 1, key, klen) == 0;
    p = ws(kend, end);
    if (p >= end || *p != ':') return none;
    p = ws(p + 1, end);
    const char *vend = skip_value(p, end);
    if (vend == NULL) return none;
    if (match) {
      span v = {p, (size_t)(vend - p)};
      return v;
    }
    p = ws(vend, end);
    if (p < end && *p == ',') p++;
  }
}

static int is_str(span v, const char *s) {
  size_t n = strlen(s);
  return v.n == n + 2 && v.p[0] == '"' && memcmp(v.p + 1, s, n) == 0;
}

static const char *known_versions[] = {"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05", NULL};

static void result_head(span id) {
  puts_("{\"jsonrpc\":\"2.0\",\"id\":");
  put_span(id);
  puts_(",\"result\":");
}

static void handle(span msg) {
  span method = get(msg, "method");
  span id = get(msg, "id");
  if (method.n == 0 || id.n == 0) return; /* a notification or a response: nothing to answer */
  span params = get(msg, "params");

  if (is_str(method, "initialize")) {
    span asked = get(params, "protocolVersion");
    const char *version = "2025-11-25";
    for (int i = 0; known_versions[i] != NULL; i++) {
      if (is_str(asked, known_versions[i])) version = known_versions[i];
    }
    result_head(id);
    puts_("{\"protocolVersion\":\"");
    puts_(version);
    puts_("\",\"capabilities\":{\"tools\":{}},\"serverInfo\":{\"name\":\"bench-echo-c\",\"version\":\"0.1.0\"}}}\n");
  } else if (is_str(method, "tools/list")) {
    result_head(id);
    puts_("{\"tools\":["
          "{\"name\":\"echo\",\"description\":\"Answers its text\",\"inputSchema\":{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}}}},"
          "{\"name\":\"progress\",\"description\":\"Sends 5 progress notifications, then answers\",\"inputSchema\":{\"type\":\"object\",\"properties\":{}}}"
          "]}}\n");
  } else if (is_str(method, "tools/call")) {
    span name = get(params, "name");
    span args = get(params, "arguments");
    if (is_str(name, "echo")) {
      span text = get(args, "text");
      result_head(id);
      puts_("{\"content\":[{\"type\":\"text\",\"text\":");
      if (text.n > 0 && text.p[0] == '"') put_span(text);
      else puts_("\"\"");
      puts_("}]}}\n");
    } else if (is_str(name, "progress")) {
      span token = get(get(params, "_meta"), "progressToken");
      if (token.n > 0) {
        for (int i = 1; i <= 5; i++) {
          char digits[4] = {(char)('0' + i), 0};
          puts_("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":");
          put_span(token);
          puts_(",\"progress\":");
          puts_(digits);
          puts_(",\"total\":5}}\n");
          flush_out(); /* one message per write, as a real server would send them over time */
        }
      }
      result_head(id);
      puts_("{\"content\":[{\"type\":\"text\",\"text\":\"done\"}]}}\n");
    } else {
      puts_("{\"jsonrpc\":\"2.0\",\"id\":");
      put_span(id);
      puts_(",\"error\":{\"code\":-32602,\"message\":\"Unknown tool\"}}\n");
    }
  } else if (is_str(method, "ping")) {
    result_head(id);
    puts_("{}}\n");
  } else {
    puts_("{\"jsonrpc\":\"2.0\",\"id\":");
    put_span(id);
    puts_(",\"error\":{\"code\":-32601,\"message\":\"Method not found\"}}\n");
  }
  flush_out();
}

int main(void) {
  size_t len = 0;
  for (;;) {
    if (len == IN_CAP) len = 0; /* a line longer than the buffer: drop it rather than grow */
    ssize_t r = read(0, in + len, IN_CAP - len);
    if (r < 0) {
      if (errno == EINTR) continue;
      return 0;
    }
    if (r == 0) return 0; /* EOF: the session is over */
    size_t scanned = len;
    len += (size_t)r;
    size_t start = 0;
    for (size_t i = scanned; i < len; i++) {
      if (in[i] == '\n') {
        span line = {in + start, i - start};
        if (line.n > 0) handle(line);
        start = i + 1;
      }
    }
    if (start > 0) {
      memmove(in, in + start, len - start);
      len -= start;
    }
  }
}
