// Skip Dash's no-op RESET_COMPONENT_STATE actions (Dash 4.x renderer; a page-load cost that grows with
// the square of the number of components).
//
// Why: every Dash component dispatches RESET_COMPONENT_STATE when it first renders. The reducer
// (`layoutHashes`) drops the hashes stored under that component's path, and always returns a new
// object — so each mount changes the store's root state and every mounted component's redux selector
// runs again. A page that mounts N components pays ~N² selector calls: the compare page of 20 runs
// (~580 components, three tables of runs) spent ~1.5 s of its ~7.9 s in them on a 2-core machine.
// A freshly mounted component has no hashes under its path, so the action changes nothing; we do not
// dispatch it then. When hashes do exist under the path the action goes through unchanged, so the
// renderer's behaviour is the same; if the renderer changes (no store, other state names) this does
// nothing.
(function () {
    if (window.__optiscopeStoreResets) return;
    window.__optiscopeStoreResets = true;
    const stores = window.dash_stores = window.dash_stores || [];

    function isNoOp(state, action) {
        const hashes = state && state.layoutHashes;
        const path = action.payload && action.payload.itempath;
        if (!hashes || !Array.isArray(path)) return false;
        const prefix = path.join(',');  // the renderer's stringifyPath
        for (const key in hashes) {
            if (key.startsWith(prefix)) return false;
        }
        return true;
    }

    function wrap(store) {
        if (!store || store.__optiscopeWrapped || typeof store.dispatch !== 'function') return;
        const dispatch = store.dispatch;
        store.dispatch = function (action) {
            if (action && action.type === 'RESET_COMPONENT_STATE' && isNoOp(store.getState(), action)) {
                return action;
            }
            return dispatch(action);
        };
        store.__optiscopeWrapped = true;
    }

    stores.forEach(wrap);
    const push = stores.push;
    stores.push = function () {
        Array.prototype.forEach.call(arguments, wrap);
        return push.apply(this, arguments);
    };
})();
