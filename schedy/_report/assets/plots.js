// Draws every figure of #figures-data (plotly specs built by schedy._report._figures).
(function () {
  var figures = JSON.parse(document.getElementById('figures-data').textContent);
  var config = {displaylogo: false, responsive: true, showLink: false, showSendToCloud: false,
                modeBarButtonsToRemove: ['select2d', 'lasso2d']};
  figures.forEach(function (figure) {
    try { Plotly.newPlot('plot-' + figure.id, figure.data, figure.layout, config); }
    catch (e) { schedyError('plot ' + figure.id + ': ' + e); }
  });
})();
