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

    let queued = false;
    function scan() {
        queued = false;
        document.querySelectorAll('.js-plotly-plot').forEach(addButton);
    }
    new MutationObserver(function () {
        if (!queued) { queued = true; window.requestAnimationFrame(scan); }
    }).observe(document.documentElement, {childList: true, subtree: true});
})();
