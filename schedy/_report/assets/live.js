// The server dashboard's experiment page: polls its data (#live-data's url) while the
// experiment runs and redraws in place -- figures with Plotly.react, the job table's
// rows keeping the reader's sort and filter -- and stops once nothing can change.
// When the page's shape changes (a figure or a column appears) the body is swapped.
(function () {
  var live = JSON.parse(document.getElementById('live-data').textContent);
  var status = document.getElementById('live-status');
  var version = live.version, shape = live.shape;

  function say(text, bad) { status.textContent = text; status.className = bad ? 'bad' : ''; }

  function apply(parts) {
    document.getElementById('live-summary').textContent = parts.summary;
    if (parts.shape === shape) {
      document.querySelector('#live-body .cards').innerHTML = parts.cards;
      var best = document.getElementById('best');
      if (best) { best.outerHTML = parts.best; }
      window.schedyPlots(parts.figures, true);
      if (window.schedyJobs && parts.table) { window.schedyJobs.update(parts.table); }
    } else {
      shape = parts.shape;
      document.getElementById('live-nav').innerHTML = parts.nav;
      document.getElementById('live-body').innerHTML = parts.body;
      window.schedyPlots(parts.figures, false);
      window.schedyJobs = parts.table ? window.schedyTable(parts.table) : null;
    }
  }

  function poll() {
    fetch(live.url, {credentials: 'same-origin', cache: 'no-store',
                     headers: {Accept: 'application/json'}})
      .then(function (answer) {
        if (answer.status === 401) {
          say('signed out (the session ended or its token was revoked): reload to sign in', true);
          return null;
        }
        if (!answer.ok) { throw new Error('the server answered ' + answer.status); }
        return answer.json();
      })
      .then(function (parts) {
        if (parts === null) { return; }
        if (parts.version !== version) {
          version = parts.version;
          try { apply(parts); } catch (e) { schedyError('update: ' + e); }
        }
        if (parts.live) {
          say('live · updated ' + new Date().toLocaleTimeString());
          setTimeout(poll, parts.refresh_ms);
        } else {
          say('finished: the experiment is DONE and no job is open');
        }
      })
      .catch(function (e) {
        say('cannot reach the server (' + e.message + '): retrying', true);
        setTimeout(poll, 2 * live.refresh_ms);
      });
  }

  if (live.live) {
    say('live');
    setTimeout(poll, live.refresh_ms);
  } else {
    say('finished: the experiment is DONE and no job is open');
  }
})();
