using static Vfio.Reports.SvgText;
using System.Text;

namespace Vfio.Reports;

/// <summary>One group of bars on a chart (e.g. one device count), one bar per series (e.g. loading mode).</summary>
public sealed record BarGroup(string Label, IReadOnlyList<(string Series, double Value)> Bars);

/// <summary>A self-contained SVG grouped bar chart with a labelled value axis and a legend.</summary>
public static class SvgBarChart
{
    private static readonly string[] Palette = ["#2a6fdb", "#f4a261", "#2a9d8f", "#9b5de5", "#e63946", "#8d99ae"];

    public static string Render(string title, string valueAxisLabel, string groupAxisLabel, IReadOnlyList<BarGroup> groups)
    {
        const double width = 900, height = 420, left = 80, right = 20, top = 60, bottom = 70;
        double plotWidth = width - left - right, plotHeight = height - top - bottom;
        var series = groups.SelectMany(g => g.Bars.Select(b => b.Series)).Distinct().ToList();
        double max = Math.Max(groups.SelectMany(g => g.Bars).Select(b => b.Value).DefaultIfEmpty(0).Max(), 1e-9);
        double step = SvgTimeline.NiceStep(max / 6);
        double axisMax = Math.Ceiling(max / step) * step;
        double Y(double v) => top + plotHeight - v / axisMax * plotHeight;

        var svg = new StringBuilder();
        svg.Append(Inv($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
            + $"font-family=\"sans-serif\" font-size=\"12\">\n"));
        svg.Append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        svg.Append(Inv($"<text x=\"{left}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{Escape(title)}</text>\n"));
        double lx = left;
        for (int s = 0; s < series.Count; s++)
        {
            svg.Append(Inv($"<rect x=\"{lx}\" y=\"34\" width=\"12\" height=\"12\" fill=\"{Palette[s % Palette.Length]}\"/><text x=\"{lx + 16}\" "
                + $"y=\"44\">{Escape(series[s])}</text>\n"));
            lx += 40 + series[s].Length * 7;
        }
        for (double v = 0; v <= axisMax + step * 1e-9; v += step)
        {
            svg.Append(Inv($"<line x1=\"{left}\" y1=\"{Y(v):0.##}\" x2=\"{left + plotWidth}\" y2=\"{Y(v):0.##}\" stroke=\"#ddd\"/>"));
            svg.Append(Inv($"<text x=\"{left - 6}\" y=\"{Y(v) + 4:0.##}\" text-anchor=\"end\">{v:0.###}</text>\n"));
        }
        svg.Append(Inv($"<text transform=\"translate(18 {top + plotHeight / 2}) rotate(-90)\" "
            + $"text-anchor=\"middle\">{Escape(valueAxisLabel)}</text>\n"));
        svg.Append(Inv($"<text x=\"{left + plotWidth / 2}\" y=\"{height - 16}\" text-anchor=\"middle\">{Escape(groupAxisLabel)}</text>\n"));

        double groupWidth = plotWidth / Math.Max(groups.Count, 1);
        double barWidth = groupWidth * 0.8 / Math.Max(series.Count, 1);
        for (int g = 0; g < groups.Count; g++)
        {
            double gx = left + g * groupWidth + groupWidth * 0.1;
            foreach (var (name, value) in groups[g].Bars)
            {
                int s = series.IndexOf(name);
                double x = gx + s * barWidth;
                svg.Append(Inv($"<rect x=\"{x:0.##}\" y=\"{Y(value):0.##}\" width=\"{barWidth * 0.92:0.##}\" "
                    + $"height=\"{top + plotHeight - Y(value):0.##}\" fill=\"{Palette[s % Palette.Length]}\"><title>{Escape(groups[g].Label)} "
                        + $"{Escape(name)}: {value:0.##}</title></rect>"));
                svg.Append(Inv($"<text x=\"{x + barWidth * 0.46:0.##}\" y=\"{Y(value) - 3:0.##}\" text-anchor=\"middle\" "
                    + $"font-size=\"10\">{value:0.#}</text>\n"));
            }
            svg.Append(Inv($"<text x=\"{left + (g + 0.5) * groupWidth:0.##}\" y=\"{top + plotHeight + 18}\" "
                + $"text-anchor=\"middle\">{Escape(groups[g].Label)}</text>\n"));
        }
        svg.Append(Inv($"<line x1=\"{left}\" y1=\"{top + plotHeight}\" x2=\"{left + plotWidth}\" y2=\"{top + plotHeight}\" stroke=\"#333\"/>\n"));
        svg.Append("</svg>\n");
        return svg.ToString();
    }
}
