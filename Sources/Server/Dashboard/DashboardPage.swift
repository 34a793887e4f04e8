// The dashboard's page (served at `/`). It holds no data: app.js asks for a token, keeps it in
// sessionStorage and sends it as `Authorization: Bearer` with every API call.
enum DashboardPage {
    static let html = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Capstan</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/dashboard/app.css">
<script src="/dashboard/app.js" defer></script>
</head>
<body>
<header class="top">
  <a class="brand" href="#/">⚓ Capstan</a>
  <nav id="crumbs" aria-label="Breadcrumb"></nav>
  <span id="live" class="live" aria-live="polite"></span>
  <button id="signout" type="button" hidden>Forget token</button>
</header>
<main id="main">
  <noscript><p class="notice">The dashboard needs JavaScript.</p></noscript>
</main>
<section id="login" class="login" hidden>
  <form id="login-form" autocomplete="off">
    <h1>Capstan dashboard</h1>
    <p>Enter an API token for this server. Create one on the server's machine with
       <code>capstan serve token create NAME</code>. The token stays in this tab
       (sessionStorage) and is sent only to this server.</p>
    <label for="token">API token</label>
    <input id="token" name="token" type="password" spellcheck="false" autocomplete="off" placeholder="cap_…" required>
    <button id="login-button" type="submit">Open dashboard</button>
    <p id="login-error" class="error" role="alert" hidden></p>
  </form>
</section>
</body>
</html>
"""#
}
