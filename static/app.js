// puqvpn: small progressive enhancements; every page works without this file.
document.addEventListener("htmx:responseError", function (event) {
  var main = document.getElementById("main");
  if (!main) return;
  var note = document.createElement("p");
  note.className = "flash error";
  note.setAttribute("role", "alert");
  note.textContent = "The request failed (" + event.detail.xhr.status + "). Reload the page and try again.";
  main.prepend(note);
});
