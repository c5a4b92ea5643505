# common.gp: settings shared by the figure scripts (loaded by each).
#
# The driver (plots/figures.sh) calls every script as
#   gnuplot -e "set loadpath 'plots'; dir='DATA'; out='OUT/figN_x'; caption='...';
#               formats='png svg pdf'" plots/figN_x.gp
# dir holds what plots/aggregate.awk wrote (panels.txt, series.txt,
# p<i>_s<j>.dat with columns x mean sd min max n best); the script draws once
# per format into out.FORMAT. Here: the terminals, the colours, the caption.

if (!exists("formats")) formats = 'png svg pdf'
if (!exists("caption")) caption = ''
if (!exists("width")) width = 900
if (!exists("height")) height = 560

# The terminal command for one format at width x height pixels (PDF: the
# same aspect at 100 pixels per inch).
term_cmd(fmt) = fmt eq 'png' ? sprintf("set terminal pngcairo size %d,%d font 'DejaVu Sans,10' noenhanced", width, height) : \
    fmt eq 'svg' ? sprintf("set terminal svg size %d,%d font 'DejaVu Sans,10' noenhanced background rgb 'white'", width, height) : \
    sprintf("set terminal pdfcairo size %.2fin,%.2fin font 'DejaVu Sans,8' noenhanced", width / 100.0, height / 100.0)

# One colour and point type per series, in the order of series.txt.
array colours[10] = ['#1b6ac9', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#7f7f7f', '#bcbd22']
colour(j) = colours[(j - 1) % 10 + 1]
ptype(j) = (j - 1) % 7 + 4

# The data file of panel i, series j (of dir, or of another directory d), and
# the labels of both.
datafile(i, j) = sprintf('%s/p%d_s%d.dat', dir, i, j)
datafile_in(d, i, j) = sprintf('%s/p%d_s%d.dat', d, i, j)
# The lines of a label file as gnuplot words (spaces inside a label as ~).
labels_in(file) = system(sprintf("cat '%s' 2>/dev/null | tr ' ' '~' | tr '\\n' ' '", file))
panels = labels_in(dir . '/panels.txt')
series = labels_in(dir . '/series.txt')
n_panels = words(panels)
n_series = words(series)
label_of(w) = system(sprintf("printf '%%s' '%s' | tr '~' ' '", w))

# The provenance caption, bottom left in small type, '|' starting a new line
# (set before the plot; screen coordinates, so in a multiplot it is set for
# the first panel only).
caption_text = system(sprintf("printf '%%s' '%s' | sed 's/ *| */\\n/g'", caption))
set_caption = "set label 100 caption_text at screen 0.01, 0.045 left font ',8' textcolor rgb '#444444' noenhanced"

# A key of every series in one row between the title and the panels of a
# multiplot: a last, empty plot across the page whose only content is the
# key (the samples are drawn outside its y range). Use: eval shared_key; then
# plot for [j = 1:n] 2 with linespoints lc rgb colour(j) pt ptype(j) title ...
shared_key = "set lmargin at screen 0.03; set rmargin at screen 0.97; set tmargin at screen 0.92; " . \
    "set bmargin at screen 0.82; unset border; unset tics; unset grid; unset xlabel; unset ylabel; " . \
    "unset title; unset label 100; unset logscale; set xrange [0:1]; set yrange [-1:1]; " . \
    "set key center center horizontal maxrows 1 reverse Left samplen 2 width 1 box opaque"

set grid lc rgb '#dddddd'
set border lc rgb '#444444'
set key noenhanced
set datafile missing '-'

# Column k of line n of a whitespace-separated file, as text ('' if absent).
field(file, n, k) = system(sprintf("awk 'NR == %d { printf \"%%s\", $%d }' '%s' 2>/dev/null", n, k, file))
# Column k of the line of file whose first column is key, as text.
lookup(file, key, k) = system(sprintf("awk '$1 == \"%s\" { printf \"%%s\", $%d; exit }' '%s' 2>/dev/null", key, k, file))
set fit quiet
set fit logfile '/dev/null'
