// The server API as the page uses it: the key from this tab's session storage, sent in the
// Authorization header only; paths relative to the hub the page came from.

const KEY = "clarion.admin.key";
// The hub's base: the page is served at <base>/admin, its modules at <base>/admin/*.js.
export const HUB = new URL("..", import.meta.url);

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function call(method, path, { query, body, apiKey } = {}) {
  const url = new URL(path, HUB);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { authorization: `apikey ${apiKey ?? key.get() ?? ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    credentials: "omit",
  });
  const payload = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = payload.error || {};
    throw new ApiError(response.status, error.code || "http_error",
      error.message || `HTTP ${response.status}`);
  }
  return payload;
}

export const get = (path, query) => call("GET", path, { query });
export const post = (path, body) => call("POST", path, { body });
