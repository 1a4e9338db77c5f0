// The job table: rows come as JSON (#table-data); a click on a header sorts by that
// column (again: the other way round), the text box and the status menu filter.
// Only the first `page` matching rows are drawn, so 10,000 jobs stay quick.
// schedyTable(spec) wires the table up; its update(spec) swaps the rows in place and
// keeps the reader's sort and filter (the dashboard's updates).
window.schedyTable = function (spec) {
  var cols = spec.columns, rows = spec.rows, page = spec.page, best = spec.best;
  var table = document.getElementById('jobs');
  var head = table.tHead.rows[0], body = table.tBodies[0];
  var filter = document.getElementById('jobs-filter');
  var status = document.getElementById('jobs-status');
  var count = document.getElementById('jobs-count');
  var order = {col: spec.sort, desc: spec.desc};

  function missing(v) { return v === null || v === undefined || v === ''; }
  function compare(a, b) {
    var x = a[order.col], y = b[order.col];
    if (missing(x) || missing(y)) { return missing(x) ? (missing(y) ? 0 : 1) : -1; }
    var r = (typeof x === 'number' && typeof y === 'number')
      ? x - y : String(x).localeCompare(String(y));
    return order.desc ? -r : r;
  }
  function text(v) {
    if (missing(v)) { return ''; }
    if (typeof v === 'number' && !Number.isInteger(v)) { return String(Number(v.toPrecision(4))); }
    return String(v);
  }
  function escape(t) { return t.replace(/&/g, '&amp;').replace(/</g, '&lt;'); }

  function draw() {
    var needle = filter.value.trim().toLowerCase(), wanted = status.value;
    var shown = rows.filter(function (r) {
      if (wanted && r[1] !== wanted) { return false; }
      return !needle || r.some(function (v) { return text(v).toLowerCase().indexOf(needle) >= 0; });
    });
    if (order.col !== null) { shown.sort(compare); }
    body.innerHTML = shown.slice(0, page).map(function (r) {
      var cells = r.map(function (v, i) {
        var cls = typeof v === 'number' ? 'n' : (i === 1 ? 'status-' + v : '');
        return '<td class="' + cls + '">' + escape(text(v)) + '</td>';
      });
      return '<tr' + (r[0] === best ? ' class="best"' : '') + '>' + cells.join('') + '</tr>';
    }).join('');
    count.textContent = shown.length > page
      ? 'showing ' + page + ' of ' + shown.length + ' matching jobs (' + rows.length +
        ' in all): filter or sort to see the others'
      : shown.length + ' of ' + rows.length + ' jobs';
    for (var i = 0; i < head.cells.length; i++) {
      head.cells[i].className = i === order.col ? (order.desc ? 'desc' : 'asc') : '';
    }
  }

  Array.prototype.forEach.call(head.cells, function (cell, i) {
    cell.title = 'sort by ' + cols[i].name;
    cell.addEventListener('click', function () {
      order = {col: i, desc: order.col === i ? !order.desc : cols[i].desc};
      draw();
    });
  });
  filter.addEventListener('input', draw);
  status.addEventListener('change', draw);
  draw();
  return {update: function (next) {
    rows = next.rows; best = next.best;
    var known = Array.prototype.map.call(status.options, function (o) { return o.value; });
    rows.forEach(function (r) {
      if (known.indexOf(r[1]) < 0) {
        known.push(r[1]);
        var option = document.createElement('option');
        option.value = option.textContent = r[1];
        status.appendChild(option);
      }
    });
    draw();
  }};
};
(function () {
  var data = document.getElementById('table-data');
  window.schedyJobs = data ? window.schedyTable(JSON.parse(data.textContent)) : null;
})();
