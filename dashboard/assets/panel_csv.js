// "Download data as CSV" in the toolbar of every chart, next to plotly's PNG button (issue 19).
// The file holds the panel's data as drawn — every trace, heatmap cells included — built in the browser
// from the figure the page already holds: no request, so nothing the signed-in person could not see.
// Columns: trace, x, y, z (z only for heatmaps). The run page also offers each scalar's full-resolution
// points from the API (GET /api/v1/runs/{id}/series?format=csv).
(function () {
    if (window.__optiscopePanelCsv) return;
    window.__optiscopePanelCsv = true;
    const CLASS = 'optiscope-csv';

    function values(v) {
        if (v === null || v === undefined) return [];
        if (Array.isArray(v) || ArrayBuffer.isView(v)) return Array.from(v);
        return [];
    }

    function cell(v) {
        if (v === null || v === undefined || (typeof v === 'number' && isNaN(v))) return '';
        const s = String(v);
        return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    }

    function csvOf(gd) {
        const lines = ['trace,x,y,z'];
        (gd._fullData || []).forEach(function (t, i) {
            if (t.visible === false || t.visible === 'legendonly') return;
            const name = t.name || ('trace ' + (i + 1));
            const xs = values(t.x), ys = values(t.y);
            if (t.z !== undefined && t.z !== null) {
                values(t.z).forEach(function (row, r) {
                    values(row).forEach(function (z, c) {
                        lines.push([name, xs.length ? xs[c] : c, ys.length ? ys[r] : r, z].map(cell).join(','));
                    });
                });
                return;
            }
            const n = Math.max(xs.length, ys.length);
            for (let k = 0; k < n; k++) {
                lines.push([name, xs.length ? xs[k] : '', ys.length ? ys[k] : '', ''].map(cell).join(','));
            }
        });
        return lines.join('\n') + '\n';
    }

    function fileName(gd) {
        const title = (((gd.layout || {}).title || {}).text || 'panel').replace(/<[^>]*>/g, '');
        return (title.replace(/[^A-Za-z0-9._-]+/g, '_').replace(/^_+|_+$/g, '') || 'panel') + '.csv';
    }

    function download(gd) {
        const blob = new Blob([csvOf(gd)], {type: 'text/csv'});
        const a = document.createElement('a');
        a.href = URL.createObjectURL(blob);
        a.download = fileName(gd);
        document.body.appendChild(a);
        a.click();
        setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    }

    function addButton(gd) {
        // plotly builds (and rebuilds) the toolbar itself, outside React: adding to it is safe
        const bar = gd.querySelector('.modebar');
        if (!bar || bar.querySelector('.' + CLASS)) return;
        const group = document.createElement('div');
        group.className = 'modebar-group';
        const btn = document.createElement('a');
        btn.className = 'modebar-btn ' + CLASS;
        btn.setAttribute('rel', 'tooltip');
        btn.setAttribute('data-title', 'Download data as CSV');
        btn.setAttribute('aria-label', 'Download data as CSV');
        btn.textContent = 'CSV';
        btn.addEventListener('click', function (ev) { ev.preventDefault(); download(gd); });
        group.appendChild(btn);
        bar.insertBefore(group, bar.firstChild);
    }

    // Hooked on plotly itself, not on the DOM: a MutationObserver over the whole document (the first
    // version) took a record of every node plotly drew and cost ~0.5 s of a run page's 2.5 s load
    // (issue 19). Every chart here is drawn by dcc.Graph through Plotly.newPlot / Plotly.react; after
    // each, the toolbar gets the button, and again after every redraw (plotly_afterplot), because
    // plotly rebuilds its toolbar when the figure or config changes.
    function attach(gd) {
        if (!gd || typeof gd.on !== 'function') return;
        addButton(gd);
        if (gd.__optiscopeCsv) return;
        gd.__optiscopeCsv = true;
        gd.on('plotly_afterplot', function () { addButton(gd); });
    }

    function hook(plotly) {
        if (!plotly || plotly.__optiscopeCsv) return;
        plotly.__optiscopeCsv = true;
        ['newPlot', 'react'].forEach(function (name) {
            const draw = plotly[name];
            if (typeof draw !== 'function') return;
            plotly[name] = function (gd) {
                const out = draw.apply(this, arguments);
                const el = typeof gd === 'string' ? document.getElementById(gd) : gd;
                Promise.resolve(out).then(function () { attach(el); }, function () {});
                return out;
            };
        });
    }

    // plotly.js loads on demand (the first chart asks for it): catch the global as it is assigned
    if (window.Plotly) {
        hook(window.Plotly);
    } else {
        let plotly;
        Object.defineProperty(window, 'Plotly', {
            configurable: true, enumerable: true,
            get: function () { return plotly; },
            set: function (value) { plotly = value; try { hook(value); } catch (e) { /* never break charts */ } },
        });
    }
})();
