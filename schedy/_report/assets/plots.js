// Draws every figure of #figures-data (plotly specs built by schedy._report._figures).
// schedyPlots(figures, true) redraws them in place (Plotly.react): the dashboard's updates.
window.schedyPlots = function (figures, react) {
  var config = {displaylogo: false, responsive: true, showLink: false, showSendToCloud: false,
                modeBarButtonsToRemove: ['select2d', 'lasso2d']};
  figures.forEach(function (figure) {
    try {
      (react ? Plotly.react : Plotly.newPlot)('plot-' + figure.id, figure.data, figure.layout,
                                              config);
    } catch (e) { schedyError('plot ' + figure.id + ': ' + e); }
  });
};
window.schedyPlots(JSON.parse(document.getElementById('figures-data').textContent), false);
