using System.Globalization;

namespace Vfio.Reports;

/// <summary>Text helpers shared by the SVG writers: XML escaping and culture-invariant numbers.</summary>
internal static class SvgText
{
    public static string Escape(string text) =>
        text.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&quot;");

    public static string Inv(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
