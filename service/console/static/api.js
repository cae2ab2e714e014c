// Calls to the /v1 API with the key kept in this tab's sessionStorage (never in a URL or a
// cookie); failures become ApiError with the envelope's code and message.
import { $, showAlert } from "./dom.js";

export const KEY_STORAGE = "cpflow-api-key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// fetch a /v1 path with the key; JSON out unless raw; ApiError (the envelope) on 4xx/5xx.
export async function api(path, { method = "GET", json, body, type, raw = false } = {}) {
  const headers = {};
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (type) {
    headers["Content-Type"] = type;
  }
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) throw await apiError(response);
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

async function apiError(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || "request failed";
  try {
    const error = (await response.json()).error;
    code = error.code;
    message = error.message;
  } catch {
    // not the envelope (a proxy's page): keep the status text
  }
  if (response.status === 401) {
    showAlert($("#auth-alert"), `The API refused the key: ${message}. Enter a valid key above.`);
    $("#api-key").setAttribute("aria-invalid", "true");
  }
  return new ApiError(response.status, code, message);
}
