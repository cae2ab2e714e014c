// The header's API key form: the key is kept in sessionStorage for this tab only.
import { KEY_STORAGE, apiKey } from "./api.js";
import { $, handle } from "./dom.js";

export function setUpKeyForm() {
  const form = $("#key-form");
  const state = $("#key-state");
  state.textContent = apiKey() ? "key set for this tab" : "no key set";
  handle(form, () => {
    const key = $("#api-key").value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    window.location.reload();
  });
  $("#key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    window.location.reload();
  });
}
