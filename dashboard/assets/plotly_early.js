// The compare and run pages draw charts as soon as their layout arrives, but dcc.Graph fetches and
// compiles plotly.js (4.8 MB) only when the first graph renders: after the server's response, on a
// main thread then busy mounting the page, so the first chart waited ~1 s for it. On those pages
// the script is started here instead, and compiles while the browser waits for the server; dcc.Graph
// uses window.Plotly when it is there (else it loads this same URL itself). Other pages (the runs
// table) do not load it.
(function () {
    if (window.Plotly || window.__optiscopePlotlyEarly) return;
    const node = document.getElementById('_dash-config');
    if (!node) return;
    let config;
    try {
        config = JSON.parse(node.textContent);
    } catch (e) {
        return;
    }
    const prefix = config.requests_pathname_prefix || '/';
    const path = window.location.pathname.slice(prefix.length - 1);
    if (!/^\/(compare|runs\/[^/]+)\/?$/.test(path)) return;
    window.__optiscopePlotlyEarly = true;
    const script = document.createElement('script');
    script.src = config.serve_locally === false ? config.plotlyjs_url
        : prefix + '_dash-component-suites/plotly/package_data/plotly.min.js';
    script.async = true;
    document.head.appendChild(script);
})();
