// A sign-in that expires (or is ended in another tab) while a page is open: the dashboard answers
// the page's callbacks with 401 (dashboard/auth/guard.py). Show the sign-in page instead of leaving
// the charts silently frozen; after signing in the person comes back to the same page.
(function () {
    if (!window.fetch || window.__optiscopeSessionWatch) return;
    window.__optiscopeSessionWatch = true;
    const fetch0 = window.fetch.bind(window);
    window.fetch = function (input, init) {
        return fetch0(input, init).then(function (response) {
            const url = typeof input === 'string' ? input : (input && input.url) || '';
            if (response.status === 401 && url.indexOf('/_dash-') !== -1) {
                const here = window.location.pathname + window.location.search;
                window.location.assign('/login?next=' + encodeURIComponent(here));
            }
            return response;
        });
    };
})();
