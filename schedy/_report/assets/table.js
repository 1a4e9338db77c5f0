(function () {
  var spec = JSON.parse(document.getElementById('table-data').textContent);
  var cols = spec.columns, rows = spec.rows, page = spec.page, best = spec.best;
  var table = document.getElementById('jobs'), head = table.tHead.rows[0], body = table.tBodies[0];
  var filter = document.getElementById('jobs-filter'), status = document.getElementById('jobs-status');
  var count = document.getElementById('jobs-count');
  var order = {col: spec.sort, desc: spec.desc}, shown = rows;
  function key(v) { return v === null || v === undefined || v === '' ? null : v; }
  function compare(a, b) {
    var x = key(a[order.col]), y = key(b[order.col]);
    if (x === null || y === null) { return x === null ? (y === null ? 0 : 1) : -1; }  // missing last
    var r = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
    return order.desc ? -r : r;
  }
  function text(v) { return v === null || v === undefined ? '' : String(v); }
  function draw() {
    var needle = filter.value.trim().toLowerCase(), wanted = status.value;
    shown = rows.filter(function (r) {
      if (wanted && r[1] !== wanted) { return false; }
      return !needle || r.some(function (v) { return text(v).toLowerCase().indexOf(needle) >= 0; });
    });
    if (order.col !== null) { shown.sort(compare); }
    var html = [];
    shown.slice(0, page).forEach(function (r) {
      var cells = r.map(function (v, i) {
        var t = text(v).replace(/&/g, '&amp;').replace(/</g, '&lt;');
        var cls = typeof v === 'number' ? 'n' : (i === 1 ? 'status-' + t : '');
        if (typeof v === 'number' && cols[i].num && !Number.isInteger(v)) { t = v.toPrecision(4); }
        return '<td class="' + cls + '">' + t + '</td>';
      });
      html.push('<tr' + (r[0] === best ? ' class="best"' : '') + '>' + cells.join('') + '</tr>');
    });
    body.innerHTML = html.join('');
    count.textContent = shown.length > page
      ? 'showing ' + page + ' of ' + shown.length + ' matching jobs (' + rows.length + ' in all): filter or sort to see others'
      : shown.length + ' of ' + rows.length + ' jobs';
    for (var i = 0; i < head.cells.length; i++) {
      head.cells[i].className = i === order.col ? (order.desc ? 'desc' : 'asc') : '';
    }
  }
  for (var i = 0; i < head.cells.length; i++) {
    head.cells[i].addEventListener('click', (function (i) { return function () {
      order = {col: i, desc: order.col === i ? !order.desc : cols[i].desc};
      draw();
    }; })(i));
  }
  filter.addEventListener('input', draw);
  status.addEventListener('change', draw);
  draw();
})();
